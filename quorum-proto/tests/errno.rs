//! R-EVENT-3: `error` is the strerror text. The C library of the machine
//! running the tests is the oracle: every number renders exactly as glibc's
//! `strerror` does (std's `io::Error` text is strerror plus " (os error N)").

use quorum_proto::Errno;

#[test]
fn every_errno_renders_as_the_c_library_does() {
    for n in -3..200 {
        let std_text = std::io::Error::from_raw_os_error(n).to_string();
        let want = std_text
            .strip_suffix(&format!(" (os error {n})"))
            .unwrap_or(&std_text);
        assert_eq!(Errno(n).to_string(), want, "errno {n}");
        assert_eq!(
            Errno(n).message().is_some(),
            !want.starts_with("Unknown error"),
            "errno {n}"
        );
    }
}

#[test]
fn named_constants_have_their_linux_numbers() {
    assert_eq!(Errno::EIO.get(), 5);
    assert_eq!(Errno::ENOSPC.get(), 28);
    assert_eq!(Errno::EPERM.get(), 1);
    assert_eq!(Errno::EIO.to_string(), "Input/output error");
}

#[test]
fn io_errors_map_to_their_errno() {
    let e = std::io::Error::from_raw_os_error(28);
    assert_eq!(Errno::from(&e), Errno::ENOSPC);
    assert_eq!(
        Errno::from(std::io::Error::from(std::io::ErrorKind::NotFound)),
        Errno::ENOENT
    );
    assert_eq!(Errno::from(std::io::Error::other("x")), Errno::EIO);
    assert_eq!(
        Errno::from(std::io::Error::from(std::io::ErrorKind::TimedOut)),
        Errno::ETIMEDOUT
    );
}
