//! Linux epoll backend (level-triggered).

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::Timespec;

use super::{events, FdMonitor, Ready};

pub(crate) struct Epoll {
    epfd: OwnedFd,
    /// Fds registered with the kernel, to choose between add and modify.
    registered: HashSet<RawFd>,
    buf: EventBuf,
}

/// The reused result buffer.
struct EventBuf(Vec<epoll::Event>);

// SAFETY: rustix's `Event` is `!Send` only because its data may be a pointer;
// we only ever store fd numbers (`EventData::new_u64`), which are plain
// integers, and the buffer holds no other state.
unsafe impl Send for EventBuf {}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        Ok(Epoll {
            epfd: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            registered: HashSet::new(),
            buf: EventBuf(Vec::with_capacity(128)),
        })
    }
}

impl AsFd for Epoll {
    /// The epoll instance's fd (readable while it has events), for a
    /// monitor that nests it.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epfd.as_fd()
    }
}

#[cfg(all(test, not(loom)))]
impl Epoll {
    /// Swaps the epoll fd for one that is not an epoll instance, so that the
    /// next `wait` fails with `EINVAL` (tests of the error path only).
    pub(crate) fn break_for_test(&mut self) {
        self.epfd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
            .expect("eventfd for the broken monitor");
    }
}

fn to_epoll(interest: u32) -> EventFlags {
    let mut f = EventFlags::empty();
    if interest & events::IN != 0 {
        f |= EventFlags::IN;
    }
    if interest & events::PRI != 0 {
        f |= EventFlags::PRI;
    }
    if interest & events::OUT != 0 {
        f |= EventFlags::OUT;
    }
    if interest & super::EDGE != 0 {
        f |= EventFlags::ET;
    }
    f
}

fn from_epoll(f: EventFlags) -> u32 {
    let mut e = 0;
    for (flag, bit) in [
        (EventFlags::IN, events::IN),
        (EventFlags::PRI, events::PRI),
        (EventFlags::OUT, events::OUT),
        (EventFlags::ERR, events::ERR),
        (EventFlags::HUP, events::HUP),
    ] {
        if f.contains(flag) {
            e |= bit;
        }
    }
    e
}

impl FdMonitor for Epoll {
    fn register(&mut self, fd: BorrowedFd<'_>, interest: u32) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let raw = fd.as_raw_fd();
        let data = EventData::new_u64(raw as u64);
        let flags = to_epoll(interest);
        if self.registered.contains(&raw) {
            match epoll::modify(&self.epfd, fd, data, flags) {
                // The fd was closed (and the number reused) behind our back:
                // the kernel dropped the old registration.
                Err(rustix::io::Errno::NOENT) => epoll::add(&self.epfd, fd, data, flags)?,
                r => r?,
            }
        } else {
            match epoll::add(&self.epfd, fd, data, flags) {
                Err(rustix::io::Errno::EXIST) => epoll::modify(&self.epfd, fd, data, flags)?,
                r => r?,
            }
            self.registered.insert(raw);
        }
        Ok(())
    }

    fn deregister(&mut self, fd: BorrowedFd<'_>) {
        use std::os::fd::AsRawFd;
        if self.registered.remove(&fd.as_raw_fd()) {
            // Quiet on failure: a registration the kernel already dropped.
            let _ = epoll::delete(&self.epfd, fd);
        }
    }

    fn wait(&mut self, timeout_ns: i64, out: &mut Vec<Ready>) -> io::Result<()> {
        let ts;
        let timeout = if timeout_ns < 0 {
            None
        } else {
            ts = Timespec {
                tv_sec: timeout_ns / 1_000_000_000,
                tv_nsec: timeout_ns % 1_000_000_000,
            };
            Some(&ts)
        };
        self.buf.0.clear();
        match epoll::wait(
            self.epfd.as_fd(),
            rustix::buffer::spare_capacity(&mut self.buf.0),
            timeout,
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        out.extend(self.buf.0.iter().map(|ev| Ready {
            fd: ev.data.u64() as RawFd,
            events: from_epoll(ev.flags),
        }));
        Ok(())
    }
}
