//! Fault injection for tests of the failure policy: `RANKSWEEP_FAULT=panic:<prefix>` makes a
//! worker panic before it starts a job whose key (its output folder's name) starts with
//! `<prefix>`; `oom:<prefix>` makes it end that job out of memory (class `oom`, exit 4), as a
//! CUDA allocation failure does. Several faults are separated by commas. Read once by the worker; nothing else
//! looks at it, and an unset variable costs one `getenv`.
//!
//! Why a real panic and not a mock: the test then sees what a bug in a worker does to a sweep
//! (the panic hook, the exit, the classification, the retry policy).

/// The environment variable.
pub const FAULT_ENV: &str = "RANKSWEEP_FAULT";

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Panic before running a job whose key starts with this prefix.
    Panic(String),
    /// End a job whose key starts with this prefix out of memory.
    Oom(String),
}

/// Parses `panic:<prefix>` and `oom:<prefix>` entries; unknown or empty entries are ignored
/// (a test hook must not break a production run).
pub fn parse(value: &str) -> Vec<Fault> {
    value
        .split(',')
        .filter_map(|f| {
            let f = f.trim();
            if let Some(p) = f.strip_prefix("panic:") {
                Some(Fault::Panic(p.to_string()))
            } else {
                f.strip_prefix("oom:").map(|p| Fault::Oom(p.to_string()))
            }
        })
        .filter(|f| match f {
            Fault::Panic(p) | Fault::Oom(p) => !p.is_empty(),
        })
        .collect()
}

/// Panics, or returns the out-of-memory error, if `RANKSWEEP_FAULT` asks for it in job `key`.
pub fn inject(key: &str) -> Result<(), super::JobError> {
    let Ok(value) = std::env::var(FAULT_ENV) else {
        return Ok(());
    };
    for fault in parse(&value) {
        match fault {
            Fault::Panic(prefix) if key.starts_with(&prefix) => {
                panic!("fault injected by {FAULT_ENV} into job {key}");
            }
            Fault::Oom(prefix) if key.starts_with(&prefix) => {
                return Err(super::JobError::OutOfMemory {
                    context: format!("job {key}"),
                    message: format!("CUDA_ERROR_OUT_OF_MEMORY (injected by {FAULT_ENV})"),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_panics_and_ignores_the_rest() {
        assert_eq!(
            parse("panic:ab12, hang:x,panic:,panic:ff,oom:cd,oom:"),
            [
                Fault::Panic("ab12".into()),
                Fault::Panic("ff".into()),
                Fault::Oom("cd".into())
            ]
        );
        assert!(parse("").is_empty());
    }
}
