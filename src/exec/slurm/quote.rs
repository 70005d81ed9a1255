//! Quoting for the two languages an sbatch script is read in: bash (the body) and sbatch's own
//! `#SBATCH` line parser (the header).
//!
//! - In bash, single quotes are literal except `'` itself, written `'\''`; that is the only
//!   escaping needed and nothing (`$`, `` ` ``, `\`, `"`, spaces, newlines) is expanded.
//! - sbatch reads `#SBATCH` lines itself, before bash: a value in double quotes may hold spaces
//!   and `#`; `\` escapes the next character; `$` is never expanded. A line cannot hold a
//!   newline. Checked against sbatch 22.05 (`--job-name="b\\s\"x"` gives `b\s"x`).
//! - In `--output`/`--error` file names sbatch replaces `%A`, `%a`, `%j`, …: a literal `%` is
//!   `%%`, and any `\` in the name turns all replacement off, so such paths are refused.

use std::path::Path;

use super::{Result, SlurmError};

/// `s` as one bash word, in single quotes.
pub fn sh_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// A path as one bash word; the path must be UTF-8 (scripts are text).
pub fn sh_quote_path(field: &'static str, path: &Path) -> Result<String> {
    Ok(sh_quote(utf8(field, path)?))
}

/// `value` as one argument on an `#SBATCH` line: double quotes, `\` and `"` escaped.
pub fn sbatch_quote(field: &'static str, value: &str) -> Result<String> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(invalid(
            field,
            value,
            "an #SBATCH line cannot hold a newline or NUL",
        ));
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '\\' || c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

/// An `--output`/`--error` file name pattern: the directory's `%` doubled so that only the
/// `pattern` (e.g. `%A_%a.out`) is replaced by sbatch, then quoted for an `#SBATCH` line.
pub fn sbatch_path_pattern(field: &'static str, dir: &Path, pattern: &str) -> Result<String> {
    let dir = utf8(field, dir)?;
    if dir.contains('\\') {
        return Err(invalid(
            field,
            dir,
            "a `\\` in an sbatch output path turns off %A/%a replacement; use a folder without it",
        ));
    }
    let dir = dir.trim_end_matches('/');
    sbatch_quote(field, &format!("{}/{pattern}", dir.replace('%', "%%")))
}

fn utf8<'a>(field: &'static str, path: &'a Path) -> Result<&'a str> {
    path.to_str().ok_or_else(|| {
        invalid(
            field,
            &path.to_string_lossy(),
            "expected a UTF-8 path (scripts and manifests are text)",
        )
    })
}

pub(crate) fn invalid(field: &'static str, value: &str, reason: &'static str) -> SlurmError {
    SlurmError::InvalidValue {
        field,
        value: value.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// What bash makes of `word` (echoed with a trailing marker so trailing spaces show).
    fn bash_reads(word: &str) -> String {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("printf '%s|' {word}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "bash failed on {word}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn sh_quote_survives_bash_for_hostile_strings() {
        for s in [
            "plain",
            "with space",
            "it's",
            "'",
            "''",
            "$HOME `id` $(id) \\ \" ; & | * ? ~ # !",
            "new\nline",
            "",
        ] {
            assert_eq!(bash_reads(&sh_quote(s)), format!("{s}|"), "{s:?}");
        }
    }

    #[test]
    fn sbatch_quote_escapes_backslash_and_double_quote() {
        assert_eq!(sbatch_quote("f", "a b").unwrap(), r#""a b""#);
        assert_eq!(sbatch_quote("f", r#"b\s"x"#).unwrap(), r#""b\\s\"x""#);
        assert_eq!(sbatch_quote("f", "$x #y 'z'").unwrap(), r#""$x #y 'z'""#);
        let err = sbatch_quote("job_name", "a\nb").unwrap_err().to_string();
        assert!(
            err.contains("`job_name`") && err.contains("newline"),
            "{err}"
        );
    }

    #[test]
    fn output_pattern_doubles_percent_and_refuses_backslash() {
        let p = sbatch_path_pattern("output", Path::new("/r/50% s/"), "%A_%a.out").unwrap();
        assert_eq!(p, r#""/r/50%% s/%A_%a.out""#);
        assert!(sbatch_path_pattern("output", Path::new("/r/a\\b"), "x").is_err());
    }
}
