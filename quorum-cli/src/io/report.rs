//! qemu-io's output formats: the statistics lines, human sizes, hex dumps.

use std::fmt::Write as _;
use std::time::Duration;

/// qemu-io's `cvtstr`: `4 KiB`, `1.500 KiB`, `40 bytes`, `925.404690 bytes`.
pub(crate) fn cvtstr(value: f64) -> String {
    const UNITS: [(&str, i32); 6] = [
        (" EiB", 60),
        (" PiB", 50),
        (" TiB", 40),
        (" GiB", 30),
        (" MiB", 20),
        (" KiB", 10),
    ];
    let (mut s, suffix) = UNITS
        .iter()
        .find(|(_, sh)| value >= 2f64.powi(*sh))
        .map(|(suf, sh)| (format!("{:.3}", value / 2f64.powi(*sh)), *suf))
        .unwrap_or_else(|| (format!("{value:.6}"), " bytes"));
    // C's strstr(str, ".000") then strcpy of the suffix over it.
    if let Some(i) = s.find(".000") {
        s.truncate(i);
    }
    s.push_str(suffix);
    s
}

/// qemu-io's `timestr` without `-C`: `00.12 sec`, or `H:MM:SS.ss` past a second.
pub(crate) fn timestr(t: Duration) -> String {
    let secs = t.as_secs();
    let frac = f64::from(t.subsec_micros()) / 1e6;
    if secs == 0 {
        format!("{frac:05.2} sec")
    } else {
        format!(
            "{}:{:02}:{:05.2}",
            secs / 3600,
            (secs % 3600) / 60,
            (secs % 60) as f64 + frac
        )
    }
}

/// The two lines qemu-io prints after a read or write.
pub(crate) fn report(op: &str, offset: u64, len: u64, t: Duration) -> String {
    // qemu-io measures in microseconds; never divide by zero.
    let secs = (t.as_micros().max(1) as f64) / 1e6;
    format!(
        "{op} {len}/{len} bytes at offset {offset}\n{}, 1 ops; {} ({}/sec and {:.4} ops/sec)\n",
        cvtstr(len as f64),
        timestr(t),
        cvtstr(len as f64 / secs),
        1.0 / secs
    )
}

/// qemu-io's `read -v` dump: 16 bytes a line, offset in hex, printable
/// alphanumerics.
pub(crate) fn dump(buf: &[u8], offset: u64) -> String {
    let mut out = String::new();
    for (i, line) in buf.chunks(16).enumerate() {
        let _ = write!(out, "{:08x}:  ", offset + 16 * i as u64);
        for b in line {
            let _ = write!(out, "{b:02x} ");
        }
        out.push(' ');
        out.extend(line.iter().map(|&b| {
            if b.is_ascii_alphanumeric() {
                b as char
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_qemu_io() {
        assert_eq!(cvtstr(4096.0), "4 KiB");
        assert_eq!(cvtstr(1536.0), "1.500 KiB");
        assert_eq!(cvtstr(40.0), "40 bytes");
        assert_eq!(cvtstr(0.0), "0 bytes");
        assert_eq!(cvtstr(925.40469), "925.404690 bytes");
        assert_eq!(cvtstr(1048576.0), "1 MiB");
        assert_eq!(cvtstr(3.0 * (1u64 << 30) as f64), "3 GiB");
        assert_eq!(cvtstr(35.594 * 1024.0), "35.594 KiB");
    }

    #[test]
    fn times_read_like_qemu_io() {
        assert_eq!(timestr(Duration::from_micros(110_000)), "00.11 sec");
        assert_eq!(timestr(Duration::from_micros(900)), "00.00 sec");
        assert_eq!(timestr(Duration::from_micros(61_500_000)), "0:01:01.50");
    }

    #[test]
    fn dump_reads_like_qemu_io() {
        let mut b = vec![0x41u8; 16];
        b.push(0);
        assert_eq!(
            dump(&b, 0),
            "00000000:  41 41 41 41 41 41 41 41 41 41 41 41 41 41 41 41  AAAAAAAAAAAAAAAA\n\
             00000010:  00  .\n"
        );
        assert_eq!(dump(&[0xab], 0x5dc00000), "5dc00000:  ab  .\n");
    }

    #[test]
    fn report_has_qemu_io_shape() {
        let r = report("read", 0, 4096, Duration::from_micros(100));
        let mut lines = r.lines();
        assert_eq!(lines.next(), Some("read 4096/4096 bytes at offset 0"));
        let l = lines.next().unwrap_or_default();
        assert!(l.starts_with("4 KiB, 1 ops; 00.00 sec ("), "{l}");
        assert!(l.ends_with(" ops/sec)"), "{l}");
    }
}
