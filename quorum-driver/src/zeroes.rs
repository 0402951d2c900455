//! Write-zeroes as QEMU's block layer does it: a child that cannot write
//! zeroes (`ENOTSUP`) gets a plain write of zeroes instead, in bounded
//! pieces like QEMU's bounce buffer — a write, which fires blkdebug's
//! `write_aio` and can fail like any write (found by the differential suite
//! against QEMU, seeds 1267, 1406, 5097, 5635).

use std::io;

use quorum_proto::Errno;

/// The largest piece of a write-zeroes done as a plain write.
pub const ZERO_CHUNK: u64 = 1 << 20;

/// Whether a write-zeroes failed in a way that calls for the fallback.
pub fn unsupported(r: &io::Result<()>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(Errno::ENOTSUP.get()))
}

/// The pieces `(offset, len)` a write-zeroes of `len` bytes at `offset` is
/// written as: at most [`ZERO_CHUNK`] bytes each.
pub fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..len.div_ceil(ZERO_CHUNK)).map(move |i| {
        let at = i * ZERO_CHUNK;
        (offset + at, (len - at).min(ZERO_CHUNK))
    })
}

/// Writes `len` zero bytes at `offset` as data, through `write(piece, at)`,
/// in [`pieces`] (one zeroed buffer for all).
pub fn write_as_data(
    offset: u64,
    len: u64,
    mut write: impl FnMut(&[u8], u64) -> io::Result<()>,
) -> io::Result<()> {
    let zeros = vec![0u8; len.min(ZERO_CHUNK) as usize];
    for (at, n) in pieces(offset, len) {
        write(&zeros[..n as usize], at)?;
    }
    Ok(())
}

/// A write-zeroes of a blocking child, with the fallback.
pub fn zeroes_or_write(child: &dyn crate::Child, offset: u64, len: u64) -> io::Result<()> {
    let r = child.write_zeroes(offset, len);
    if unsupported(&r) {
        return write_as_data(offset, len, |piece, at| child.write_at(piece, at));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_range_and_stop_at_an_error() {
        let mut seen = Vec::new();
        write_as_data(10, 2 * ZERO_CHUNK + 5, |p, at| {
            assert!(p.iter().all(|&b| b == 0));
            seen.push((at, p.len() as u64));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                (10, ZERO_CHUNK),
                (10 + ZERO_CHUNK, ZERO_CHUNK),
                (10 + 2 * ZERO_CHUNK, 5)
            ]
        );
        let mut calls = 0;
        let r = write_as_data(0, 3 * ZERO_CHUNK, |_, _| {
            calls += 1;
            Err(io::Error::from_raw_os_error(28))
        });
        assert_eq!(r.unwrap_err().raw_os_error(), Some(28));
        assert_eq!(calls, 1);
        write_as_data(0, 0, |_, _| panic!("nothing to write")).unwrap();
    }
}
