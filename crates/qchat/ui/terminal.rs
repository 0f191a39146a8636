//! Taking over the terminal and giving it back.
//!
//! Entering switches to the alternate screen, raw mode, bracketed paste and
//! mouse reporting. Every way out must undo all of it, or the user's shell
//! is left unusable: the [`Guard`] restores on drop (normal exit, `?`,
//! unwinding), and a panic hook restores *before* the panic message is
//! printed, so the message lands on the normal screen where it can be read.

use std::io::{self, Stdout, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use crossterm::event::{
    DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture,
};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use crossterm::{cursor, execute};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

/// Whether the terminal is currently taken over; restoring twice would
/// print the leave sequences twice, and drawing after a panic hook has
/// restored would scribble on the normal screen.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The terminal while the UI owns it; restores it when dropped.
pub struct Guard {
    /// What ratatui draws on.
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

/// Takes over the terminal. On failure, whatever was already changed is
/// undone.
pub fn enter() -> io::Result<Guard> {
    install_panic_hook();
    enable_raw_mode()?;
    ACTIVE.store(true, Ordering::SeqCst);
    let setup = (|| {
        execute!(
            io::stdout(),
            EnterAlternateScreen,
            EnableBracketedPaste,
            EnableMouseCapture
        )?;
        Terminal::new(CrosstermBackend::new(io::stdout()))
    })();
    match setup {
        Ok(terminal) => Ok(Guard { terminal }),
        Err(e) => {
            restore();
            Err(e)
        }
    }
}

/// Whether the UI still owns the terminal (a panic hook may have given it
/// back already).
pub fn active() -> bool {
    ACTIVE.load(Ordering::SeqCst)
}

/// Gives the terminal back: mouse and paste modes off, cursor shown, the
/// normal screen back, raw mode off. Safe to call more than once. Leaving
/// the alternate screen comes last among the escape sequences so that the
/// user's screen is back exactly as it was.
pub fn restore() {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return;
    }
    let mut out = io::stdout();
    let _ = execute!(
        out,
        DisableMouseCapture,
        DisableBracketedPaste,
        cursor::Show,
        LeaveAlternateScreen
    );
    let _ = out.flush();
    let _ = disable_raw_mode();
}

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}
