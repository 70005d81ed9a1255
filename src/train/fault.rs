//! Fault injection for tests of the failure policy: `RANKSWEEP_FAULT=panic:<prefix>` makes a
//! worker panic before it starts a job whose key (its output folder's name) starts with
//! `<prefix>`. Several faults are separated by commas. Read once by the worker; nothing else
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
}

/// Parses `panic:<prefix>[,panic:<prefix>…]`; unknown or empty entries are ignored (a test
/// hook must not break a production run).
pub fn parse(value: &str) -> Vec<Fault> {
    value
        .split(',')
        .filter_map(|f| f.trim().strip_prefix("panic:"))
        .filter(|p| !p.is_empty())
        .map(|p| Fault::Panic(p.to_string()))
        .collect()
}

/// Panics if `RANKSWEEP_FAULT` asks for a panic in job `key`.
pub fn inject(key: &str) {
    let Ok(value) = std::env::var(FAULT_ENV) else {
        return;
    };
    for Fault::Panic(prefix) in parse(&value) {
        if key.starts_with(&prefix) {
            panic!("fault injected by {FAULT_ENV} into job {key}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_panics_and_ignores_the_rest() {
        assert_eq!(
            parse("panic:ab12, hang:x,panic:,panic:ff"),
            [Fault::Panic("ab12".into()), Fault::Panic("ff".into())]
        );
        assert!(parse("").is_empty());
    }
}
