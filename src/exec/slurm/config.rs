//! Cluster limits read from `scontrol show config`: only `MaxArraySize` for now.
//!
//! The output is `Key = value` lines (aligned with spaces) after a `Configuration data as of …`
//! header; see `fixtures/scontrol_show_config.txt`, captured from SLURM 22.05.

use super::{Result, SlurmError};

/// SLURM's default `MaxArraySize` (array indices 0..=1000), used when the key is absent.
pub const DEFAULT_MAX_ARRAY_SIZE: u32 = 1001;

/// `MaxArraySize` from `scontrol show config` output; [`DEFAULT_MAX_ARRAY_SIZE`] when absent.
///
/// An array's largest index must be below this value, so an array holds at most this many tasks.
pub fn parse_max_array_size(show_config: &str) -> Result<u32> {
    for (i, line) in show_config.lines().enumerate() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "MaxArraySize" {
            continue;
        }
        return value.trim().parse().map_err(|_| SlurmError::Parse {
            what: "scontrol show config",
            line: i + 1,
            text: line.to_owned(),
            expected: "`MaxArraySize = <non-negative integer>`",
        });
    }
    Ok(DEFAULT_MAX_ARRAY_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = include_str!("fixtures/scontrol_show_config.txt");

    #[test]
    fn reads_max_array_size_from_real_output() {
        assert_eq!(parse_max_array_size(REAL).unwrap(), 1001);
        let edited = REAL.replace(
            "MaxArraySize            = 1001",
            "MaxArraySize            = 40001",
        );
        assert_eq!(parse_max_array_size(&edited).unwrap(), 40001);
    }

    #[test]
    fn absent_key_gives_the_default_and_a_prefix_key_is_not_it() {
        let without: String = REAL
            .lines()
            .filter(|l| !l.starts_with("MaxArraySize"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            parse_max_array_size(&without).unwrap(),
            DEFAULT_MAX_ARRAY_SIZE
        );
        assert_eq!(
            parse_max_array_size("MaxArraySizeX = 5\n").unwrap(),
            DEFAULT_MAX_ARRAY_SIZE
        );
    }

    #[test]
    fn a_non_number_is_an_error_naming_the_line() {
        let err = parse_max_array_size("Foo = 1\nMaxArraySize = lots\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("lots"), "{err}");
    }
}
