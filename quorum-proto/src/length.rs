//! The device length check (R-CFG-7).

use crate::errno::Errno;

/// The quorum device's length from its children's, in child order, as
/// QEMU's `quorum_co_getlength`: a child's own error is returned as is, and
/// the first child whose length differs from child 0's makes it `EIO`.
/// Children are looked at in order and the first problem wins. No children
/// is `EINVAL` (a configuration never has none).
pub fn device_length<I>(lengths: I) -> Result<u64, Errno>
where
    I: IntoIterator<Item = Result<u64, Errno>>,
{
    let mut it = lengths.into_iter();
    let first = it.next().ok_or(Errno::EINVAL)??;
    for len in it {
        if len? != first {
            return Err(Errno::EIO);
        }
    }
    Ok(first)
}
