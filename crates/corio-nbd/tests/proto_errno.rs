//! NBD error values: the spec's numbers, the round trip through
//! `io::Error`, and how OS errors map onto the few errors NBD has
//! (split from the golden-bytes tests; no wire bytes here).

use corio_nbd::proto::Errno;

#[test]
fn errno_values_and_io_mapping() {
    use std::io::{Error, ErrorKind};
    let cases = [
        (Errno::EPERM, 1),
        (Errno::EIO, 5),
        (Errno::ENOMEM, 12),
        (Errno::EINVAL, 22),
        (Errno::ENOSPC, 28),
        (Errno::EOVERFLOW, 75),
        (Errno::ENOTSUP, 95),
        (Errno::ESHUTDOWN, 108),
    ];
    for (e, v) in cases {
        assert_eq!(e.0, v);
        // Our own errno round-trips through io::Error.
        assert_eq!(Errno::from(&e.to_io_error()), e);
    }
    let os = |c| Errno::from(&Error::from_raw_os_error(c));
    assert_eq!(os(libc::EROFS), Errno::EPERM);
    assert_eq!(os(libc::EDQUOT), Errno::ENOSPC);
    assert_eq!(os(libc::EFBIG), Errno::ENOSPC);
    assert_eq!(os(libc::EOPNOTSUPP), Errno::ENOTSUP);
    assert_eq!(os(libc::ENOENT), Errno::EINVAL);
    assert_eq!(
        Errno::from(Error::from(ErrorKind::StorageFull)),
        Errno::ENOSPC
    );
    assert_eq!(
        Errno::from(Error::from(ErrorKind::ReadOnlyFilesystem)),
        Errno::EPERM
    );
    assert_eq!(Errno::from(Error::other("x")), Errno::EINVAL);
    // An unknown value reads as EINVAL, as the spec asks of clients.
    assert_eq!(Errno(1234).to_io_error().raw_os_error(), Some(libc::EINVAL));
}
