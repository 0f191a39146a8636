//! Taking over the terminal and giving it back.
//!
//! Entering switches to the alternate screen, raw mode, bracketed paste and
//! mouse reporting, and saves the window title. Every way out must undo all
//! of it, or the user's shell is left unusable: the [`Guard`] restores on
//! drop (normal exit, `?`, unwinding), and a panic hook restores *before*
//! the panic message is printed, so the message lands on the normal screen
//! where it can be read.
//!
//! Mouse reporting is what lets a click pick a conversation and the wheel
//! scroll; its price is that the terminal no longer selects text on a
//! plain drag. Terminals keep selection on Shift-drag (Option-drag in
//! macOS Terminal, Fn in some others) while an application has the mouse,
//! which README.md says.
//!
//! The title cannot be read back from a terminal, so it is saved on the
//! terminal's own title stack (xterm's `CSI 22 t`, which most terminals
//! share) and popped on the way out; one without the stack ignores both,
//! and keeps our last title until something else sets one.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use crossterm::event::{
    DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture,
};
use crossterm::terminal::SetTitle;
use crossterm::{cursor, execute};
use ratatui::DefaultTerminal;

/// Whether the terminal is currently taken over; restoring twice would
/// print the leave sequences twice, and drawing after a panic hook has
/// restored would scribble on the normal screen.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Saves the window and icon titles on the terminal's title stack.
const PUSH_TITLE: &[u8] = b"\x1b[22;0t";

/// Brings back the titles saved by [`PUSH_TITLE`].
const POP_TITLE: &[u8] = b"\x1b[23;0t";

/// The terminal while the UI owns it; restores it when dropped.
pub struct Guard {
    /// What ratatui draws on.
    pub terminal: DefaultTerminal,
}

/// Takes over the terminal: ratatui's own setup (raw mode, the alternate
/// screen, a panic hook that restores both), plus what ratatui does not
/// know we turned on (bracketed paste, mouse reporting). On failure,
/// whatever was already changed is undone.
pub fn enter() -> io::Result<Guard> {
    ACTIVE.store(true, Ordering::SeqCst);
    let terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            restore();
            return Err(e);
        }
    };
    // After ratatui's hook, so it runs first: paste and mouse modes off
    // before ratatui leaves the alternate screen.
    install_panic_hook();
    let mut out = io::stdout();
    let set = out
        .write_all(PUSH_TITLE)
        .and_then(|()| execute!(out, EnableBracketedPaste, EnableMouseCapture));
    if let Err(e) = set {
        restore();
        return Err(e);
    }
    Ok(Guard { terminal })
}

/// Sets the window title. `title` must be sanitised: a title is written
/// inside an escape sequence.
pub fn set_title(title: &str) {
    if active() {
        let _ = execute!(io::stdout(), SetTitle(title));
    }
}

/// Whether the UI still owns the terminal (a panic hook may have given it
/// back already).
pub fn active() -> bool {
    ACTIVE.load(Ordering::SeqCst)
}

/// Gives the terminal back: mouse and paste modes off and the cursor shown
/// (ours to undo), then raw mode off and the normal screen back
/// (ratatui's). Safe to call more than once.
pub fn restore() {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return;
    }
    let mut out = io::stdout();
    let _ = execute!(
        out,
        DisableMouseCapture,
        DisableBracketedPaste,
        cursor::Show
    );
    let _ = out.write_all(POP_TITLE);
    let _ = out.flush();
    let _ = ratatui::try_restore();
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
