//! The shape limits on message `data` (SPEC §5, `limits.max_json_depth`):
//! how deep arrays and objects may nest, and that every number is a finite
//! double.
//!
//! Both exist for the readers, not the server: a 30,000-deep array is valid
//! JSON, but Python's `json`, serde_json (recursion limit 128) and most
//! browsers' parsers give up on it, and `1e999999` reads back as infinity (or
//! fails) — a poller that cannot parse a page is stuck at that message for
//! ever.
//!
//! A hand-written scan rather than a parse into `serde_json::Value`: the data
//! is already known to be valid JSON and is kept as raw text (encode once,
//! never re-parse), a `Value` would build a tree for every publish only to
//! throw it away, and serde_json's depth limit is fixed at 128 and not
//! configurable. The scan allocates nothing and reads the text once.

/// Checks `text` (valid JSON) against the depth limit and for non-finite
/// numbers; the error is a message for the client.
pub(crate) fn check(text: &str, max_depth: usize) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string: its brackets and digits are not structure.
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(format!(
                        "data nests arrays and objects deeper than {max_depth} levels \
                         (limits.max_json_depth)"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                let literal = &text[start..i];
                // Rust's parser rounds to the nearest double, giving
                // infinity exactly when the magnitude overflows f64.
                if !literal.parse::<f64>().is_ok_and(f64::is_finite) {
                    let shown: String = literal.chars().take(40).collect();
                    return Err(format!(
                        "data holds a number too large for a double: {shown}"
                    ));
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn depth_counts_arrays_and_objects_outside_strings() {
        assert!(check("1", 1).is_ok());
        assert!(check("[]", 1).is_ok());
        assert!(check("[[]]", 1).is_err());
        assert!(check(r#"{"a":[1,{"b":2}]}"#, 3).is_ok());
        assert!(check(r#"{"a":[1,{"b":2}]}"#, 2).is_err());
        // Siblings do not add up: depth is nesting, not count.
        assert!(check("[[],[],[],[]]", 2).is_ok());
        // Brackets in strings (escaped quotes included) are text.
        assert!(check(r#"["[[[[", "\"[[[[\\", "{{"]"#, 1).is_ok());
        let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
        assert!(check(&deep, 32).unwrap_err().contains("max_json_depth"));
        let ok = format!("{}{}", "[".repeat(32), "]".repeat(32));
        assert!(check(&ok, 32).is_ok());
    }

    #[test]
    fn numbers_must_be_finite_doubles() {
        for ok in [
            "0",
            "-0",
            "1.5e300",
            "-1.7976931348623157e308",
            "1e-999999",
            "123456789012345678901234567890",
            r#"{"n":[1,-2.5E+3]}"#,
            r#""1e999999""#,
        ] {
            assert!(check(ok, 32).is_ok(), "{ok}");
        }
        for bad in [
            "1e999999",
            "-1e309",
            r#"{"x":[1,2,1E400]}"#,
            &format!("1{}", "0".repeat(400)),
        ] {
            let e = check(bad, 32).unwrap_err();
            assert!(e.contains("too large"), "{bad}: {e}");
        }
    }
}
