//! qemu-io's command language, for the commands `quorum io` runs.
//!
//! A command line is split on spaces; the first word names the command
//! (`read`/`r`, `write`/`w`, `flush`/`f`, `length`/`l`), the argument count is
//! checked before options are, options may appear anywhere (GNU getopt
//! permutes them, `--` ends them), and numbers take qemu-io's suffixes. Every
//! error is qemu-io's own message where qemu-io has one.

/// One parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cmd {
    /// `read [-qv] [-P pattern] off len`
    Read {
        offset: u64,
        len: u64,
        /// `-P`: every byte must equal this.
        pattern: Option<u8>,
        /// `-v`: dump the data.
        verbose: bool,
        /// `-q`: no statistics (nor dump).
        quiet: bool,
    },
    /// `write [-qz] [-P pattern] off len`
    Write {
        offset: u64,
        len: u64,
        /// The byte written, `None` for `-z` (write-zeroes).
        fill: Option<u8>,
        quiet: bool,
    },
    /// `flush`
    Flush,
    /// `length`
    Length,
}

impl Cmd {
    /// Whether the command writes to the children.
    pub(crate) fn writes(&self) -> bool {
        matches!(self, Cmd::Write { .. })
    }

    /// The byte range the command touches, if any.
    pub(crate) fn range(&self) -> Option<(u64, u64)> {
        match *self {
            Cmd::Read { offset, len, .. } | Cmd::Write { offset, len, .. } => Some((offset, len)),
            Cmd::Flush | Cmd::Length => None,
        }
    }
}

/// The largest request qemu-io accepts (`BDRV_REQUEST_MAX_BYTES`).
pub(crate) const MAX_REQUEST: u64 = 2_147_483_136;

/// qemu-io's `write` pattern when no `-P` is given.
const WRITE_PATTERN: u8 = 0xcd;

/// Parses one `-c` command.
pub(crate) fn parse(line: &str) -> Result<Cmd, String> {
    let words: Vec<&str> = line.split(' ').filter(|w| !w.is_empty()).collect();
    let Some((&name, args)) = words.split_first() else {
        return Err("empty command".into());
    };
    match name {
        "read" | "r" => rw(name, args, true),
        "write" | "w" => rw(name, args, false),
        "flush" | "f" | "length" | "l" => {
            if !args.is_empty() {
                return Err(format!(
                    "bad argument count {} to {name}, expected 0 arguments",
                    args.len()
                ));
            }
            Ok(if name.starts_with('f') {
                Cmd::Flush
            } else {
                Cmd::Length
            })
        }
        _ => Err(format!("command \"{name}\" not found")),
    }
}

/// `read` and `write`: options `-q`, `-v` (read), `-z` (write), `-P pattern`.
fn rw(name: &str, args: &[&str], read: bool) -> Result<Cmd, String> {
    if args.len() < 2 {
        return Err(format!(
            "bad argument count {} to {name}, expected at least 2 arguments",
            args.len()
        ));
    }
    let (mut quiet, mut verbose, mut zero) = (false, false, false);
    let mut pattern = None;
    let mut operands = Vec::new();
    let mut it = args.iter();
    let mut only_operands = false;
    while let Some(&arg) = it.next() {
        if only_operands || !arg.starts_with('-') || arg == "-" {
            operands.push(arg);
            continue;
        }
        if arg == "--" {
            only_operands = true;
            continue;
        }
        for (i, c) in arg[1..].char_indices() {
            match c {
                'q' => quiet = true,
                'v' if read => verbose = true,
                'z' if !read => zero = true,
                'P' => {
                    let rest = &arg[1 + i + 1..];
                    let value = if rest.is_empty() {
                        *it.next()
                            .ok_or_else(|| format!("{name}: option requires an argument -- 'P'"))?
                    } else {
                        rest
                    };
                    pattern = Some(parse_pattern(value)?);
                    break;
                }
                c if known_option(read, c) => {
                    return Err(format!(
                        "{name}: option -{c} is not supported by quorum io (supported: {})",
                        if read { "-P -q -v" } else { "-P -q -z" }
                    ));
                }
                c => return Err(format!("{name}: invalid option -- '{c}'")),
            }
        }
    }
    if operands.len() != 2 {
        return Err(format!(
            "{name}: expected 2 arguments (off len), got {}: usage: {}",
            operands.len(),
            if read {
                "read [-qv] [-P pattern] off len"
            } else {
                "write [-qz] [-P pattern] off len"
            }
        ));
    }
    if zero && pattern.is_some() {
        return Err("Only one of -z, -P, and -s can be specified at the same time".into());
    }
    let offset = cvtnum(operands[0])?;
    let len = cvtnum(operands[1])?;
    if len > MAX_REQUEST {
        return Err(format!(
            "length cannot exceed {MAX_REQUEST}, given {}",
            operands[1]
        ));
    }
    Ok(if read {
        Cmd::Read {
            offset,
            len,
            pattern,
            verbose,
            quiet,
        }
    } else {
        Cmd::Write {
            offset,
            len,
            fill: if zero {
                None
            } else {
                Some(pattern.unwrap_or(WRITE_PATTERN))
            },
            quiet,
        }
    })
}

/// Options qemu-io's `read`/`write` know but `quorum io` does not implement.
fn known_option(read: bool, c: char) -> bool {
    if read {
        "abCprsl".contains(c)
    } else {
        "abcCfnpsu".contains(c)
    }
}

/// A pattern byte: C's `strtol(arg, 0)` (decimal, `0x` hex, `0` octal), 0..=255.
pub(crate) fn parse_pattern(arg: &str) -> Result<u8, String> {
    let bad = || format!("{arg} is not a valid pattern byte");
    let t = arg.trim_start();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    // Digits only after the prefix: `from_str_radix` would take a second sign.
    let digits = |d: &str, radix: u32| !d.is_empty() && d.chars().all(|c| c.is_digit(radix));
    let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        if !digits(h, 16) {
            return Err(bad());
        }
        u64::from_str_radix(h, 16).map_err(|_| bad())?
    } else if t.len() > 1 && t.starts_with('0') {
        if !digits(&t[1..], 8) {
            return Err(bad());
        }
        u64::from_str_radix(&t[1..], 8).map_err(|_| bad())?
    } else if t.bytes().all(|b| b.is_ascii_digit()) && !t.is_empty() {
        t.parse::<u64>().map_err(|_| bad())?
    } else {
        return Err(bad());
    };
    if neg && v != 0 {
        return Err(bad());
    }
    u8::try_from(v).map_err(|_| bad())
}

/// A size as qemu-io's `cvtnum` reads it (`qemu_strtosz`): decimal with an
/// optional fraction, or `0x` hex, then an optional suffix
/// `B K M G T P E` (either case, powers of 1024). A fraction needs a
/// suffix other than `B`; hex takes no suffix.
pub(crate) fn cvtnum(s: &str) -> Result<u64, String> {
    let bad =
        || format!("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {s}");
    let too_large = || format!("Parsing error: argument too large -- {s}");
    let t = s.trim_start();
    // strtoull takes one leading plus sign.
    let t = t.strip_prefix('+').unwrap_or(t);
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        return match u64::from_str_radix(h, 16) {
            Ok(v) if v <= i64::MAX as u64 => Ok(v),
            _ => Err(too_large()),
        };
    }
    let int_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (int, rest) = t.split_at(int_end);
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(r) => {
            let e = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            (Some(&r[..e]), &r[e..])
        }
        None => (None, rest),
    };
    if int.is_empty() && frac.is_none_or(str::is_empty) {
        return Err(bad());
    }
    let shift = match rest {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        "e" | "E" => 60,
        _ => return Err(bad()),
    };
    // QEMU needs a suffix only for a fraction that is not zero.
    if frac.is_some_and(|f| f.bytes().any(|b| b != b'0')) && shift == 0 {
        return Err(bad());
    }
    let whole: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| too_large())?
    };
    let mut v = whole.checked_shl(shift).ok_or_else(too_large)?;
    if whole > u64::MAX as u128 {
        return Err(too_large());
    }
    if let Some(f) = frac.filter(|f| !f.is_empty()) {
        // As qemu-io 10: the whole number as a double minus its integer
        // part, times the unit, rounded to the nearest byte (1.0004k is
        // 1024, 1.0006k is 1025, 1.1M is 1153434; checked against qemu-io).
        let number: f64 = format!("{}.{f}", if int.is_empty() { "0" } else { int })
            .parse()
            .map_err(|_| bad())?;
        let fraction = number - whole as f64;
        v += (fraction * (1u64 << shift) as f64).round() as u128;
    }
    if v > i64::MAX as u128 {
        return Err(too_large());
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_take_qemu_io_suffixes() {
        assert_eq!(cvtnum("4k"), Ok(4096));
        assert_eq!(cvtnum("1.5k"), Ok(1536));
        assert_eq!(cvtnum(".5k"), Ok(512));
        assert_eq!(cvtnum("1.0001k"), Ok(1024));
        assert_eq!(cvtnum("1M"), Ok(1 << 20));
        assert_eq!(cvtnum("08"), Ok(8));
        assert_eq!(cvtnum("0x10"), Ok(16));
        assert_eq!(cvtnum("1B"), Ok(1));
        assert_eq!(cvtnum("1e"), Ok(1 << 60));
        // QEMU: a zero fraction needs no suffix, one plus sign is fine, and
        // the fraction is a double.
        assert_eq!(cvtnum("512.0"), Ok(512));
        assert_eq!(cvtnum("512."), Ok(512));
        assert_eq!(cvtnum("+512"), Ok(512));
        assert_eq!(cvtnum("+0x200"), Ok(512));
        assert!(cvtnum("512.5").is_err());
        assert_eq!(cvtnum("0.999999999999999999k"), Ok(1024));
        assert_eq!(cvtnum("2.9999999999999999k"), Ok(3072));
        assert_eq!(cvtnum("1.0004k"), Ok(1024));
        assert_eq!(cvtnum("1.0006k"), Ok(1025));
        assert_eq!(cvtnum("1.1M"), Ok(1153434));
        assert_eq!(cvtnum("0.7k"), Ok(717));
        for bad in ["x", "1.5", "1.5b", "0x1k", "0x", "1kk", "1,5", "1.5.5", ""] {
            assert_eq!(
                cvtnum(bad),
                Err(format!(
                    "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {bad}"
                )),
                "{bad}"
            );
        }
        assert!(
            cvtnum("99999999999999999999")
                .unwrap_err()
                .contains("too large")
        );
        assert!(cvtnum("16e").unwrap_err().contains("too large"));
    }

    #[test]
    fn patterns_are_strtol_bytes() {
        assert_eq!(parse_pattern("0xab"), Ok(0xab));
        assert_eq!(parse_pattern("010"), Ok(8));
        assert_eq!(parse_pattern("65"), Ok(65));
        // A second sign after the prefix is not a number (C strtol stops there).
        assert!(parse_pattern("0x+5").is_err());
        assert!(parse_pattern("0+5").is_err());
        assert_eq!(parse_pattern("0"), Ok(0));
        for bad in ["0x1ff", "-1", "0x", "256", "x", "08"] {
            assert_eq!(
                parse_pattern(bad),
                Err(format!("{bad} is not a valid pattern byte"))
            );
        }
    }

    #[test]
    fn commands_parse_like_qemu_io() {
        assert_eq!(
            parse("read -P 0xab 0 4k"),
            Ok(Cmd::Read {
                offset: 0,
                len: 4096,
                pattern: Some(0xab),
                verbose: false,
                quiet: false
            })
        );
        assert_eq!(
            parse("r  0 1 -v"),
            Ok(Cmd::Read {
                offset: 0,
                len: 1,
                pattern: None,
                verbose: true,
                quiet: false
            })
        );
        assert_eq!(
            parse("write -P5 1k 1k"),
            Ok(Cmd::Write {
                offset: 1024,
                len: 1024,
                fill: Some(5),
                quiet: false
            })
        );
        assert_eq!(
            parse("w -z 0 512"),
            Ok(Cmd::Write {
                offset: 0,
                len: 512,
                fill: None,
                quiet: false
            })
        );
        assert_eq!(
            parse("write 0 1"),
            Ok(Cmd::Write {
                offset: 0,
                len: 1,
                fill: Some(0xcd),
                quiet: false
            })
        );
        assert_eq!(parse("flush"), Ok(Cmd::Flush));
        assert_eq!(parse("l"), Ok(Cmd::Length));
        assert_eq!(parse("foo").unwrap_err(), "command \"foo\" not found");
        assert_eq!(
            parse("read").unwrap_err(),
            "bad argument count 0 to read, expected at least 2 arguments"
        );
        assert_eq!(
            parse("flush x").unwrap_err(),
            "bad argument count 1 to flush, expected 0 arguments"
        );
        assert_eq!(
            parse("read -1 1").unwrap_err(),
            "read: invalid option -- '1'"
        );
        assert!(parse("read -C 0 1").unwrap_err().contains("not supported"));
        assert!(parse("read 0 1 2").unwrap_err().contains("usage"));
        assert_eq!(
            parse("write -z -P 1 0 1").unwrap_err(),
            "Only one of -z, -P, and -s can be specified at the same time"
        );
        assert_eq!(
            parse("read 0 3G").unwrap_err(),
            "length cannot exceed 2147483136, given 3G"
        );
        assert_eq!(parse("   ").unwrap_err(), "empty command");
    }
}
