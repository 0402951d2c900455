//! Errno values: how quorum talks about I/O errors.
//!
//! QEMU votes on negative errno values and reports them with `strerror`
//! (R-VOTE-3, R-EVENT-3). We keep the positive Linux number and carry glibc's
//! message table so events render byte for byte like QEMU's on Linux, without
//! libc and without `std`.

use core::fmt;

/// A positive Linux errno value, compared by equality in error votes (R-VOTE-3).
///
/// Any number is accepted (a driver may pass anything) and
/// render as glibc does for unknown values: `Unknown error N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// `EPERM` (1): Operation not permitted.
    pub const EPERM: Errno = Errno(1);
    /// `ENOENT` (2): No such file or directory.
    pub const ENOENT: Errno = Errno(2);
    /// `EINTR` (4): Interrupted system call.
    pub const EINTR: Errno = Errno(4);
    /// `EIO` (5): Input/output error.
    pub const EIO: Errno = Errno(5);
    /// `ENXIO` (6): No such device or address.
    pub const ENXIO: Errno = Errno(6);
    /// `EBADF` (9): Bad file descriptor.
    pub const EBADF: Errno = Errno(9);
    /// `EAGAIN` (11): Resource temporarily unavailable.
    pub const EAGAIN: Errno = Errno(11);
    /// `ENOMEM` (12): Cannot allocate memory.
    pub const ENOMEM: Errno = Errno(12);
    /// `EACCES` (13): Permission denied.
    pub const EACCES: Errno = Errno(13);
    /// `EFAULT` (14): Bad address.
    pub const EFAULT: Errno = Errno(14);
    /// `EBUSY` (16): Device or resource busy.
    pub const EBUSY: Errno = Errno(16);
    /// `EEXIST` (17): File exists.
    pub const EEXIST: Errno = Errno(17);
    /// `ENODEV` (19): No such device.
    pub const ENODEV: Errno = Errno(19);
    /// `EINVAL` (22): Invalid argument.
    pub const EINVAL: Errno = Errno(22);
    /// `EFBIG` (27): File too large.
    pub const EFBIG: Errno = Errno(27);
    /// `ENOSPC` (28): No space left on device.
    pub const ENOSPC: Errno = Errno(28);
    /// `ESPIPE` (29): Illegal seek.
    pub const ESPIPE: Errno = Errno(29);
    /// `EROFS` (30): Read-only file system.
    pub const EROFS: Errno = Errno(30);
    /// `EPIPE` (32): Broken pipe.
    pub const EPIPE: Errno = Errno(32);
    /// `ERANGE` (34): Numerical result out of range.
    pub const ERANGE: Errno = Errno(34);
    /// `ENOSYS` (38): Function not implemented.
    pub const ENOSYS: Errno = Errno(38);
    /// `ENODATA` (61): No data available.
    pub const ENODATA: Errno = Errno(61);
    /// `ETIME` (62): Timer expired.
    pub const ETIME: Errno = Errno(62);
    /// `EOVERFLOW` (75): Value too large for defined data type.
    pub const EOVERFLOW: Errno = Errno(75);
    /// `ENOTSUP` (95): Operation not supported.
    pub const ENOTSUP: Errno = Errno(95);
    /// `ECONNRESET` (104): Connection reset by peer.
    pub const ECONNRESET: Errno = Errno(104);
    /// `ENOTCONN` (107): Transport endpoint is not connected.
    pub const ENOTCONN: Errno = Errno(107);
    /// `ESHUTDOWN` (108): Cannot send after transport endpoint shutdown.
    pub const ESHUTDOWN: Errno = Errno(108);
    /// `ETIMEDOUT` (110): Connection timed out.
    pub const ETIMEDOUT: Errno = Errno(110);
    /// `ECONNREFUSED` (111): Connection refused.
    pub const ECONNREFUSED: Errno = Errno(111);
    /// `EHOSTUNREACH` (113): No route to host.
    pub const EHOSTUNREACH: Errno = Errno(113);
    /// `ESTALE` (116): Stale file handle.
    pub const ESTALE: Errno = Errno(116);
    /// `EREMOTEIO` (121): Remote I/O error.
    pub const EREMOTEIO: Errno = Errno(121);
    /// `EDQUOT` (122): Disk quota exceeded.
    pub const EDQUOT: Errno = Errno(122);
    /// `ENOMEDIUM` (123): No medium found.
    pub const ENOMEDIUM: Errno = Errno(123);
    /// `ECANCELED` (125): Operation canceled.
    pub const ECANCELED: Errno = Errno(125);

    /// The errno number.
    pub const fn get(self) -> i32 {
        self.0
    }

    /// glibc's `strerror` text for this value, if it has one.
    ///
    /// `None` for numbers glibc calls `Unknown error N`; [`fmt::Display`]
    /// renders those exactly that way.
    pub const fn message(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "Success",
            1 => "Operation not permitted",
            2 => "No such file or directory",
            3 => "No such process",
            4 => "Interrupted system call",
            5 => "Input/output error",
            6 => "No such device or address",
            7 => "Argument list too long",
            8 => "Exec format error",
            9 => "Bad file descriptor",
            10 => "No child processes",
            11 => "Resource temporarily unavailable",
            12 => "Cannot allocate memory",
            13 => "Permission denied",
            14 => "Bad address",
            15 => "Block device required",
            16 => "Device or resource busy",
            17 => "File exists",
            18 => "Invalid cross-device link",
            19 => "No such device",
            20 => "Not a directory",
            21 => "Is a directory",
            22 => "Invalid argument",
            23 => "Too many open files in system",
            24 => "Too many open files",
            25 => "Inappropriate ioctl for device",
            26 => "Text file busy",
            27 => "File too large",
            28 => "No space left on device",
            29 => "Illegal seek",
            30 => "Read-only file system",
            31 => "Too many links",
            32 => "Broken pipe",
            33 => "Numerical argument out of domain",
            34 => "Numerical result out of range",
            35 => "Resource deadlock avoided",
            36 => "File name too long",
            37 => "No locks available",
            38 => "Function not implemented",
            39 => "Directory not empty",
            40 => "Too many levels of symbolic links",
            42 => "No message of desired type",
            43 => "Identifier removed",
            44 => "Channel number out of range",
            45 => "Level 2 not synchronized",
            46 => "Level 3 halted",
            47 => "Level 3 reset",
            48 => "Link number out of range",
            49 => "Protocol driver not attached",
            50 => "No CSI structure available",
            51 => "Level 2 halted",
            52 => "Invalid exchange",
            53 => "Invalid request descriptor",
            54 => "Exchange full",
            55 => "No anode",
            56 => "Invalid request code",
            57 => "Invalid slot",
            59 => "Bad font file format",
            60 => "Device not a stream",
            61 => "No data available",
            62 => "Timer expired",
            63 => "Out of streams resources",
            64 => "Machine is not on the network",
            65 => "Package not installed",
            66 => "Object is remote",
            67 => "Link has been severed",
            68 => "Advertise error",
            69 => "Srmount error",
            70 => "Communication error on send",
            71 => "Protocol error",
            72 => "Multihop attempted",
            73 => "RFS specific error",
            74 => "Bad message",
            75 => "Value too large for defined data type",
            76 => "Name not unique on network",
            77 => "File descriptor in bad state",
            78 => "Remote address changed",
            79 => "Can not access a needed shared library",
            80 => "Accessing a corrupted shared library",
            81 => ".lib section in a.out corrupted",
            82 => "Attempting to link in too many shared libraries",
            83 => "Cannot exec a shared library directly",
            84 => "Invalid or incomplete multibyte or wide character",
            85 => "Interrupted system call should be restarted",
            86 => "Streams pipe error",
            87 => "Too many users",
            88 => "Socket operation on non-socket",
            89 => "Destination address required",
            90 => "Message too long",
            91 => "Protocol wrong type for socket",
            92 => "Protocol not available",
            93 => "Protocol not supported",
            94 => "Socket type not supported",
            95 => "Operation not supported",
            96 => "Protocol family not supported",
            97 => "Address family not supported by protocol",
            98 => "Address already in use",
            99 => "Cannot assign requested address",
            100 => "Network is down",
            101 => "Network is unreachable",
            102 => "Network dropped connection on reset",
            103 => "Software caused connection abort",
            104 => "Connection reset by peer",
            105 => "No buffer space available",
            106 => "Transport endpoint is already connected",
            107 => "Transport endpoint is not connected",
            108 => "Cannot send after transport endpoint shutdown",
            109 => "Too many references: cannot splice",
            110 => "Connection timed out",
            111 => "Connection refused",
            112 => "Host is down",
            113 => "No route to host",
            114 => "Operation already in progress",
            115 => "Operation now in progress",
            116 => "Stale file handle",
            117 => "Structure needs cleaning",
            118 => "Not a XENIX named type file",
            119 => "No XENIX semaphores available",
            120 => "Is a named type file",
            121 => "Remote I/O error",
            122 => "Disk quota exceeded",
            123 => "No medium found",
            124 => "Wrong medium type",
            125 => "Operation canceled",
            126 => "Required key not available",
            127 => "Key has expired",
            128 => "Key has been revoked",
            129 => "Key was rejected by service",
            130 => "Owner died",
            131 => "State not recoverable",
            132 => "Operation not possible due to RF-kill",
            133 => "Memory page has hardware error",
            _ => return None,
        })
    }
}

impl fmt::Display for Errno {
    /// Writes the `strerror` text, as QEMU puts it in `QUORUM_REPORT_BAD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message() {
            Some(m) => f.write_str(m),
            None => write!(f, "Unknown error {}", self.0),
        }
    }
}

#[cfg(feature = "std")]
impl From<&std::io::Error> for Errno {
    /// The OS error number when there is one; otherwise the closest errno for
    /// the error kind, and `EIO` when nothing fits.
    fn from(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        if let Some(n) = e.raw_os_error() {
            return Errno(n);
        }
        match e.kind() {
            K::NotFound => Errno::ENOENT,
            K::PermissionDenied => Errno::EACCES,
            K::ConnectionRefused => Errno::ECONNREFUSED,
            K::ConnectionReset => Errno::ECONNRESET,
            K::NotConnected => Errno::ENOTCONN,
            K::BrokenPipe => Errno::EPIPE,
            K::AlreadyExists => Errno::EEXIST,
            K::WouldBlock => Errno::EAGAIN,
            K::InvalidInput | K::InvalidData => Errno::EINVAL,
            K::TimedOut => Errno::ETIMEDOUT,
            K::Interrupted => Errno::EINTR,
            K::Unsupported => Errno::ENOTSUP,
            K::OutOfMemory => Errno::ENOMEM,
            K::UnexpectedEof => Errno::EIO,
            _ => Errno::EIO,
        }
    }
}

#[cfg(feature = "std")]
impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno::from(&e)
    }
}
