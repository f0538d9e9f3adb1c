//! Go's `time.ParseDuration`, which is what Consul uses for `wait`, `TTL` and
//! `LockDelay`: a sequence of decimal numbers, each with a unit (`ns`, `us`,
//! `µs`, `ms`, `s`, `m`, `h`), such as "300ms", "1.5h" or "2h45m"; a bare "0"
//! is allowed. Error texts are Go's, because Consul puts them in its answers.

/// Nanoseconds (negative allowed, as in Go), or Go's error text.
pub(crate) fn parse_go_duration(orig: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {}", go_quote(orig));
    let mut s = orig;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !s.is_empty() {
        let bytes = s.as_bytes();
        // The integer part.
        let int_len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
        let int_part = &s[..int_len];
        s = &s[int_len..];
        // The fraction.
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let frac_len = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
            frac_part = &rest[..frac_len];
            s = &rest[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        // The unit.
        let unit_len = s
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map(|(i, _)| i)
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {}", go_quote(orig)));
        }
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let per_unit: i128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    go_quote(unit),
                    go_quote(orig)
                ))
            }
        };
        let int_value: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut value = int_value.checked_mul(per_unit).ok_or_else(invalid)?;
        if !frac_part.is_empty() {
            // At most 18 digits matter at nanosecond precision for any unit.
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac: i128 = digits.parse().map_err(|_| invalid())?;
            value += frac * per_unit / 10i128.pow(digits.len() as u32);
        }
        total = total.checked_add(value).ok_or_else(invalid)?;
        if total > i64::MAX as i128 {
            return Err(invalid());
        }
    }
    Ok(if negative { -total } else { total })
}

/// Go's `%q` for the plain strings that show up here.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_go() {
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("10s"), Ok(10_000_000_000));
        assert_eq!(parse_go_duration("100ms"), Ok(100_000_000));
        assert_eq!(parse_go_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_go_duration("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration(".5s"), Ok(500_000_000));
        assert_eq!(parse_go_duration("-2s"), Ok(-2_000_000_000));
        assert_eq!(
            parse_go_duration("10"),
            Err("time: missing unit in duration \"10\"".to_string())
        );
        assert_eq!(
            parse_go_duration("10x"),
            Err("time: unknown unit \"x\" in duration \"10x\"".to_string())
        );
        assert_eq!(
            parse_go_duration("abc"),
            Err("time: invalid duration \"abc\"".to_string())
        );
        assert_eq!(
            parse_go_duration(""),
            Err("time: invalid duration \"\"".to_string())
        );
    }
}
