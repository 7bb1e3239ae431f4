//! Kubernetes resource quantities (`100m`, `2`, `0.5`, `64Mi`, `1Gi`, `1G`, `500M`, `1e3`)
//! parsed into integers: cpu in millicores, memory in bytes.

use serde_json::Value;

/// A quantity in thousandths of its unit, rounded up as Kubernetes' `Quantity.MilliValue`
/// does; `None` when it is not a valid non-negative quantity.
///
/// Worked example: `"1.5Gi"` is mantissa 15 with one fractional digit, times 2^30, so
/// 15 * 1073741824 * 10^(3-1) = 1610612736000 milli-bytes = 1610612736 bytes.
pub fn parse_milli(quantity: &str) -> Option<i128> {
    let q = quantity.trim();
    let number_len = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(number_len);
    let number = number.strip_prefix('+').unwrap_or(number);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || whole.len() + fraction.len() > 30 {
        return None;
    }
    let mut mantissa: i128 = 0;
    for c in whole.chars().chain(fraction.chars()) {
        mantissa = mantissa * 10 + i128::from(c.to_digit(10)?);
    }
    let (binary, exp10) = suffix_scale(suffix)?;
    let numerator = mantissa.checked_mul(binary)?;
    let exponent = exp10 + 3 - fraction.len() as i32;
    if exponent >= 0 {
        numerator.checked_mul(10i128.checked_pow(exponent as u32)?)
    } else {
        let divisor = 10i128.checked_pow(exponent.unsigned_abs())?;
        Some((numerator + divisor - 1) / divisor)
    }
}

/// The multiplier a suffix stands for: (binary factor, decimal exponent).
fn suffix_scale(suffix: &str) -> Option<(i128, i32)> {
    Some(match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        _ => {
            let exp = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            (1, exp.parse::<i32>().ok().filter(|e| e.abs() <= 30)?)
        }
    })
}

fn quantity_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn saturate(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A cpu quantity in millicores.
pub fn cpu_millis(value: &Value) -> Option<i64> {
    parse_milli(&quantity_text(value)?).map(saturate)
}

/// A memory (or any plain count) quantity in whole units, rounded up.
pub fn whole_units(value: &Value) -> Option<i64> {
    parse_milli(&quantity_text(value)?).map(|m| saturate((m + 999) / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cpu_quantities_in_millicores() {
        assert_eq!(cpu_millis(&json!("100m")), Some(100));
        assert_eq!(cpu_millis(&json!("2")), Some(2000));
        assert_eq!(cpu_millis(&json!(2)), Some(2000));
        assert_eq!(cpu_millis(&json!("0.5")), Some(500));
        assert_eq!(cpu_millis(&json!(0.25)), Some(250));
        assert_eq!(cpu_millis(&json!("1.5")), Some(1500));
        assert_eq!(cpu_millis(&json!("250000u")), Some(250));
        assert_eq!(cpu_millis(&json!("1n")), Some(1), "rounded up");
    }

    #[test]
    fn memory_quantities_in_bytes() {
        assert_eq!(whole_units(&json!("64Mi")), Some(64 << 20));
        assert_eq!(whole_units(&json!("1Gi")), Some(1 << 30));
        assert_eq!(whole_units(&json!("1.5Gi")), Some(1_610_612_736));
        assert_eq!(whole_units(&json!("1G")), Some(1_000_000_000));
        assert_eq!(whole_units(&json!("500M")), Some(500_000_000));
        assert_eq!(whole_units(&json!("128974848")), Some(128_974_848));
        assert_eq!(whole_units(&json!("129e6")), Some(129_000_000));
        assert_eq!(whole_units(&json!("1k")), Some(1000));
        assert_eq!(whole_units(&json!("8Ki")), Some(8192));
        assert_eq!(whole_units(&json!("110")), Some(110));
    }

    #[test]
    fn invalid_quantities_are_rejected() {
        for bad in ["", "abc", "1Qi", "-1", "1..2", "1e99", "."] {
            assert_eq!(parse_milli(bad), None, "{bad:?}");
        }
        assert_eq!(cpu_millis(&json!(true)), None);
    }
}
