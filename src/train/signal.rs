//! Stop requests from signals: SIGTERM (the orchestrator's or SLURM's terminate), SIGINT
//! (Ctrl-C) and SIGUSR1 (SLURM's `--signal=B:USR1@120` warning before the time limit).
//!
//! Design: the handler only stores `true` into a static [`AtomicBool`] (async-signal-safe); the
//! job polls the flag before every step and every test case and stops cleanly there, so no
//! half-written file is left and no `result.json` is written. Tests set the same flag directly,
//! without signals.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// The signals that request a clean stop.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1];

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the handler for [`STOP_SIGNALS`] and returns the flag it sets.
pub fn install_stop_handler() -> std::io::Result<&'static AtomicBool> {
    install_for(&STOP_SIGNALS)
}

fn install_for(signals: &[libc::c_int]) -> std::io::Result<&'static AtomicBool> {
    for &sig in signals {
        // SAFETY: a zeroed sigaction with our handler and an empty mask is valid; the handler
        // only touches an atomic, which is async-signal-safe.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(&STOP)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raising SIGUSR1 in-process (it would kill the test binary without our handler) sets the
    /// flag. Only SIGUSR1 is hooked here, so Ctrl-C still stops the test run.
    #[test]
    fn a_signal_sets_the_stop_flag() {
        let flag = install_for(&[libc::SIGUSR1]).unwrap();
        // SAFETY: raising a signal whose handler we just installed.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0);
        assert!(flag.load(Ordering::SeqCst));
        flag.store(false, Ordering::SeqCst);
    }
}
