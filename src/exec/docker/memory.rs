//! Parsing of memory sizes (`resources.memory`) as `docker run --memory` reads them.

use super::DockerError;

/// Parses a memory size: plain bytes, or a number (decimals allowed) with a
/// binary unit as `docker run --memory` reads it: `k`, `m`, `g`, `t`, each
/// optionally followed by `b`, `i` or `ib`, any case (`512m`, `2g`, `1.5G`,
/// `256Mi`). Zero is rejected: it would mean "no limit".
pub fn parse_memory(s: &str) -> Result<u64, DockerError> {
    let invalid = || DockerError::InvalidMemory {
        value: s.to_owned(),
    };
    let text = s.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let valid_number = !number.is_empty()
        && number.chars().filter(|&c| c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    if !valid_number {
        return Err(invalid());
    }
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        "t" | "tb" | "ti" | "tib" => 40,
        _ => return Err(invalid()),
    };
    let bytes = if let Ok(whole) = number.parse::<u64>() {
        whole
            .checked_shl(shift)
            .filter(|bytes| bytes >> shift == whole)
            .ok_or_else(invalid)?
    } else {
        let value: f64 = number.parse().map_err(|_| invalid())?;
        fractional_bytes(value * 2f64.powf(f64::from(shift))).ok_or_else(invalid)?
    };
    if bytes == 0 {
        return Err(invalid());
    }
    Ok(bytes)
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "range-checked just before the cast"
)]
fn fractional_bytes(value: f64) -> Option<u64> {
    #[expect(clippy::cast_precision_loss, reason = "only a bound")]
    let max = u64::MAX as f64;
    (value.is_finite() && value >= 0.0 && value < max).then(|| value.round() as u64)
}
