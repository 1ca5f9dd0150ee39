//! Human-readable numbers for the command line.

/// `1536` → `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Parses `--limit-rate`: `500`, `64K`, `10M`, `1G` (binary multiples).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a rate like 500, 64K, 10M or 1G"))?;
    match n.checked_mul(mult) {
        Some(0) => Err("the rate must be above zero".into()),
        Some(rate) => Ok(rate),
        None => Err(format!("{s:?} is too large")),
    }
}

/// Writes one line of command output. A reader that went away (a closed
/// pipe) ends the process with status 0, as the output is no longer
/// wanted; any other write failure ends it with status 1.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("ferry: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("500"), Ok(500));
        assert_eq!(parse_rate("64K"), Ok(65536));
        assert_eq!(parse_rate("10m"), Ok(10 << 20));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn sizes_format() {
        assert_eq!(bytes(10), "10 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
