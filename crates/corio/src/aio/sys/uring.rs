//! Linux io_uring backend: the fd monitor of QEMU's util/fdmon-io_uring.c
//! and the file operations of block/io_uring.c ("luring") on one ring.
//!
//! # fd monitoring
//!
//! Each registered fd has one one-shot `POLL_ADD` in the ring. When it
//! completes the fd is reported, and it is re-armed at the start of the next
//! [`wait`](FdMonitor::wait): after the context has run the fd's handler.
//! A handler that left the fd readable gets it reported again at once (the
//! re-armed poll completes during that submission), which is what makes the
//! registration level-triggered. Multishot poll would save the re-arm SQE
//! but is edge-triggered (one CQE per wake-up of the fd's wait queue), so
//! the level semantics would need a readiness cache on our side; QEMU's
//! fdmon-io_uring re-arms one-shot polls too. The context's own notifier
//! (registered with [`EDGE`]) is the one multishot poll: every `set` wakes
//! the wait queue and posts a CQE, and the eventfd is never read.
//!
//! Nothing reaches the kernel until the next `wait`: registrations, re-arms
//! and file operations queued during one loop iteration go in with its one
//! `io_uring_enter`, which also waits. The exception is `deregister` of an
//! armed fd: a pending poll holds a reference to the file, so the
//! `POLL_REMOVE` is submitted at once, before the caller can close the fd
//! and expect its peer to see the close.
//!
//! # Adaptive polling
//!
//! A context that spins before it sleeps watches this ring from memory
//! ([`Uring::has_completions`], after [`Uring::submit_pending`]): that is
//! how fds without a poll callback take part in polling on this monitor
//! (`aio/poll/mod.rs`). The ring is set up with no flags, as QEMU's: a poll
//! completion is posted by task work of this thread, and without
//! `IORING_SETUP_COOP_TASKRUN` the kernel interrupts the spinning thread to
//! run it, so the completion reaches the queue with no system call of ours.
//! Should the ring ever be set up with `COOP_TASKRUN | TASKRUN_FLAG`, the
//! kernel sets `IORING_SQ_TASKRUN` instead; the check and the zero-timeout
//! wait handle that flag (and `IORING_SQ_CQ_OVERFLOW`) by entering the
//! kernel with `GETEVENTS`. BENCHMARKS.md has the measurements.
//!
//! # user_data
//!
//! * polls: `generation << 32 | fd`, so that a completion of a removed
//!   registration (the fd number since reused) is recognised as stale;
//! * file operations: [`OP_BIT`] | the operation's id;
//! * removals and cancellations: [`IGNORE`], their completions are dropped.
//!
//! # Buffers (the unsafe part)
//!
//! An SQE carries raw pointers the kernel uses until the CQE is posted. A
//! read or write buffer is a `Vec<u8>` moved into `ops` when the SQE is
//! pushed, and taken out only when its CQE has been reaped ([`Uring::take_op`])
//! or the operation was abandoned and its CQE arrived. The `Vec` is never
//! touched in between, so its heap block stays where the kernel writes.
//! `Drop` cancels what is still in flight and waits for every CQE before the
//! buffers are freed; if the ring fails while waiting, the buffers are
//! leaked rather than freed under the kernel.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::{events, Epoll, FdMonitor, Ready, EDGE};
use crate::coroutine::CoHandle;
use crate::trace;

/// Submission queue size; the completion queue is twice that, and the
/// kernel keeps completions that overflow it (`IORING_FEAT_NODROP`).
const ENTRIES: u32 = 256;

/// user_data bit of file operations.
const OP_BIT: u64 = 1 << 63;
/// user_data of removals and cancellations, whose completions are dropped.
const IGNORE: u64 = 1 << 62;
/// Generations wrap below the `IGNORE` bit.
const GEN_MASK: u32 = (1 << 30) - 1;

/// The events a poll completion may carry: poll(2)'s bits are ours.
const REPORTED: u32 =
    events::IN | events::PRI | events::OUT | events::ERR | events::HUP | events::NVAL;

/// One registered fd.
#[derive(Debug)]
struct Reg {
    interest: u32,
    generation: u32,
    /// A poll for it is in the ring (queued or submitted).
    armed: bool,
    /// The poll failed with an error other than cancellation: reported
    /// once, not re-armed until registered again.
    failed: bool,
}

impl Reg {
    fn user_data(&self, fd: RawFd) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(fd as u32)
    }
}

/// A file operation for [`Uring::submit_op`]. The fd must stay open until
/// the operation has been submitted (the kernel takes its own reference
/// then); the context guarantees that by submitting before the caller's
/// borrow of the file ends (see `aio/uring.rs`).
#[derive(Debug)]
pub(crate) enum FileOp {
    /// `pread` into `buf[at..]`.
    Read {
        fd: RawFd,
        offset: u64,
        buf: Vec<u8>,
        at: usize,
    },
    /// `pwrite` of `buf[at..]`.
    Write {
        fd: RawFd,
        offset: u64,
        buf: Vec<u8>,
        at: usize,
    },
    /// `fsync`, or `fdatasync` with `datasync`.
    Fsync { fd: RawFd, datasync: bool },
    /// `fallocate(fd, mode, offset, len)`.
    Fallocate {
        fd: RawFd,
        mode: i32,
        offset: u64,
        len: u64,
    },
}

/// A file operation in flight or completed.
struct Op {
    /// The buffer the kernel reads or writes (empty for the others). See
    /// the module documentation: untouched until `result` is set.
    buf: Vec<u8>,
    /// The CQE's result, once reaped.
    result: Option<i32>,
    /// Woken when the CQE is reaped; `None` once abandoned.
    waiter: Option<CoHandle>,
}

/// The io_uring fd monitor and file-operation ring.
pub(crate) struct Uring {
    ring: IoUring,
    regs: HashMap<RawFd, Reg>,
    /// Registrations whose poll must be (re)armed at the next `wait`.
    to_arm: Vec<RawFd>,
    next_generation: u32,
    ops: HashMap<u64, Op>,
    next_op: u64,
    /// Waiters of completed operations, for the context to wake.
    woken: Vec<CoHandle>,
    /// Completions reaped while making room in a full queue, processed
    /// by the next `wait`.
    stash: Vec<(u64, i32, u32)>,
    /// Registrations that ask for `PRI`, in an epoll instance of their own
    /// whose fd the ring polls: the kernel's io_uring poll ignores wake-ups
    /// that carry `EPOLLPRI` unless the poll also asks for another event
    /// (`io_poll_wake` masks out `IO_ASYNC_POLL_COMMON`), so a poll for
    /// urgent data alone would never complete; asking for `IN` too would
    /// spin while ordinary data waits unread. Created on first use.
    pri: Option<Epoll>,
}

impl Uring {
    /// Sets up a ring. Fails as `io_uring_setup` does (`ENOSYS` without
    /// io_uring, `EPERM` under a seccomp filter or
    /// `kernel.io_uring_disabled`, `ENOMEM` over `RLIMIT_MEMLOCK` on old
    /// kernels) and with `EOPNOTSUPP` on kernels older than 5.11, whose
    /// `io_uring_enter` takes no timeout.
    pub(crate) fn new() -> io::Result<Uring> {
        let ring = IoUring::new(ENTRIES)?;
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without IORING_FEAT_EXT_ARG or IORING_FEAT_NODROP (kernel < 5.11)",
            ));
        }
        Ok(Uring {
            ring,
            regs: HashMap::new(),
            to_arm: Vec::new(),
            next_generation: 0,
            ops: HashMap::new(),
            next_op: 0,
            woken: Vec::new(),
            stash: Vec::new(),
            pri: None,
        })
    }

    fn ptr(&self) -> *const () {
        self as *const Uring as *const ()
    }

    /// Submission queue entries (for traces).
    pub(crate) fn sq_entries(&self) -> usize {
        self.ring.params().sq_entries() as usize
    }

    /// Number of file operations whose CQE has not been reaped.
    pub(crate) fn ops_in_flight(&self) -> usize {
        self.ops.values().filter(|op| op.result.is_none()).count()
    }

    /// Pushes one SQE, making room if the queue is full: submits what is
    /// queued (retrying `EINTR`), and if the kernel is busy with a full
    /// completion queue (`EBUSY`), reaps completions into the stash first.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until its CQE is reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller guarantees the entry's pointers.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc_errno::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc_errno::EBUSY) => self.reap_to_stash(),
                Err(e) => return Err(e),
            }
        }
    }

    fn reap_to_stash(&mut self) {
        let stash = &mut self.stash;
        stash.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
    }

    /// Submits what is queued now, retrying `EINTR`.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        while !self.ring.submission().is_empty() {
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc_errno::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc_errno::EBUSY) => self.reap_to_stash(),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn push_ignored(&mut self, entry: squeue::Entry) -> io::Result<()> {
        let entry = entry.user_data(IGNORE);
        // SAFETY: removals and cancellations carry no pointer.
        unsafe { self.push(&entry) }
    }

    /// Pushes the polls of the registrations that need one.
    fn arm_pending(&mut self) -> io::Result<()> {
        let mut to_arm = std::mem::take(&mut self.to_arm);
        for &fd in &to_arm {
            let Some(reg) = self.regs.get_mut(&fd) else {
                continue; // deregistered since
            };
            if reg.armed || reg.failed {
                continue;
            }
            reg.armed = true;
            let edge = reg.interest & EDGE != 0;
            let entry = opcode::PollAdd::new(types::Fd(fd), reg.interest & !EDGE)
                .multi(edge)
                .build()
                .user_data(reg.user_data(fd));
            // SAFETY: a poll carries no pointer.
            unsafe { self.push(&entry) }?;
        }
        to_arm.clear();
        // Keep the allocation; nothing was pushed onto `to_arm` meanwhile.
        self.to_arm = to_arm;
        Ok(())
    }

    /// Submits `op`; `waiter` is woken (through [`take_woken`](Self::take_woken))
    /// when its CQE is reaped. Returns the operation's id. If the ring is
    /// broken (the queue cannot be flushed), the operation completes at
    /// once with that error, its buffer untouched.
    ///
    /// `bs` names the file for the trace event (QEMU's BlockDriverState).
    pub(crate) fn submit_op(&mut self, op: FileOp, bs: *const (), waiter: CoHandle) -> u64 {
        let id = self.next_op;
        self.next_op = (self.next_op + 1) & !(OP_BIT | IGNORE);
        let (fd, offset, nbytes, op_type) = match &op {
            FileOp::Read {
                fd,
                offset,
                buf,
                at,
            } => (*fd, *offset, buf.len() - at, qemu_aio::READ),
            FileOp::Write {
                fd,
                offset,
                buf,
                at,
            } => (*fd, *offset, buf.len() - at, qemu_aio::WRITE),
            FileOp::Fsync { fd, .. } => (*fd, 0, 0, qemu_aio::FLUSH),
            FileOp::Fallocate {
                fd, offset, mode, ..
            } => (*fd, *offset, 0, qemu_aio::fallocate(*mode)),
        };
        // A read that continues after a short one (`AioFile::read_full_at`)
        // is QEMU's resubmission of a short read, not a new request.
        let resubmit = match &op {
            FileOp::Read { at, .. } if *at > 0 => Some(*at),
            _ => None,
        };
        let (entry, buf) = build_op(op);
        match resubmit {
            Some(nread) => trace::luring_resubmit_short_read(
                self.ptr(),
                id,
                i32::try_from(nread).unwrap_or(i32::MAX),
            ),
            None => trace::luring_co_submit(bs, self.ptr(), id, fd, offset, nbytes, op_type),
        }
        // Move the buffer into the table first: its heap block does not
        // move with the `Vec`, so the pointers `build_op` took stay valid.
        self.ops.insert(
            id,
            Op {
                buf,
                result: None,
                waiter: Some(waiter),
            },
        );
        let entry = entry.user_data(OP_BIT | id);
        // SAFETY: the entry's buffer, if any, is the heap block of the
        // `Vec` just stored in `ops[id]`, which stays there untouched until
        // the CQE with this id is reaped (module documentation).
        if let Err(e) = unsafe { self.push(&entry) } {
            // Never queued: nothing refers to the buffer.
            let op = self.ops.get_mut(&id).expect("just inserted");
            op.result = Some(
                -e.raw_os_error()
                    .unwrap_or(rustix::io::Errno::IO.raw_os_error()),
            );
            op.waiter = None;
        }
        id
    }

    /// The result and buffer of operation `id`, once its CQE was reaped.
    pub(crate) fn take_op(&mut self, id: u64) -> Option<(i32, Vec<u8>)> {
        self.ops.get(&id)?.result?;
        self.ops
            .remove(&id)
            .map(|op| (op.result.unwrap_or(0), op.buf))
    }

    /// Its waiter gave up (its coroutine is unwinding): cancels the
    /// operation and submits now, so that its fd is resolved before the
    /// caller's borrow ends. The buffer stays in `ops` until the CQE.
    pub(crate) fn abandon_op(&mut self, id: u64) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        if op.result.is_some() {
            self.ops.remove(&id);
            return;
        }
        op.waiter = None;
        let cancel = opcode::AsyncCancel::new(OP_BIT | id).build();
        // A failure leaves the op to complete on its own: still owned.
        if self.push_ignored(cancel).is_ok() {
            let _ = self.flush();
        }
    }

    /// Moves the waiters of completed operations into `out`.
    pub(crate) fn take_woken(&mut self, out: &mut Vec<CoHandle>) {
        out.append(&mut self.woken);
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32, out: &mut Vec<Ready>) {
        if user_data == IGNORE {
            return;
        }
        if user_data & OP_BIT != 0 {
            let id = user_data & !OP_BIT;
            trace::luring_process_completion(self.ptr(), id, res);
            if let Some(op) = self.ops.get_mut(&id) {
                op.result = Some(res);
                match op.waiter.take() {
                    Some(w) => self.woken.push(w),
                    // Abandoned: the kernel is done with the buffer.
                    None => drop(self.ops.remove(&id)),
                }
            }
            return;
        }
        let fd = user_data as u32 as RawFd;
        if res >= 0 && self.pri_fd() == Some(fd) && self.regs.contains_key(&fd) {
            // The nested epoll has events: report its fds instead.
            if let Some(reg) = self.regs.get_mut(&fd) {
                reg.armed = false;
                self.to_arm.push(fd);
            }
            if let Some(pri) = &mut self.pri {
                // Its errors (none expected: a valid epoll fd, no
                // blocking) leave those fds unreported this round only.
                let _ = pri.wait(0, out);
            }
            return;
        }
        let Some(reg) = self.regs.get_mut(&fd) else {
            return;
        };
        if reg.generation != (user_data >> 32) as u32 {
            return; // a removed registration's poll
        }
        let multishot = reg.interest & EDGE != 0;
        if !multishot || !cqueue::more(flags) {
            reg.armed = false;
            self.to_arm.push(fd);
        }
        if res >= 0 {
            out.push(Ready {
                fd,
                events: res as u32 & REPORTED,
            });
        } else if res != -libc_errno::ECANCELED {
            // EBADF and the like: reported once, as poll(2) reports POLLNVAL.
            reg.failed = true;
            out.push(Ready {
                fd,
                events: events::ERR | events::NVAL,
            });
        }
    }

    fn reap(&mut self, out: &mut Vec<Ready>) {
        for (ud, res, flags) in std::mem::take(&mut self.stash) {
            self.complete(ud, res, flags, out);
        }
        loop {
            let Some(c) = self.ring.completion().next() else {
                break;
            };
            self.complete(c.user_data(), c.result(), c.flags(), out);
        }
    }

    /// Cancels every operation in flight and waits for their CQEs; true
    /// when none is left.
    fn drain_ops(&mut self) -> bool {
        let ids: Vec<u64> = self
            .ops
            .iter()
            .filter(|(_, op)| op.result.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(op) = self.ops.get_mut(&id) {
                op.waiter = None;
            }
            if self
                .push_ignored(opcode::AsyncCancel::new(OP_BIT | id).build())
                .is_err()
            {
                return false;
            }
        }
        let mut sink = Vec::new();
        while self.ops.values().any(|op| op.result.is_none()) {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc_errno::EINTR) => {}
                Err(_) => return false,
            }
            self.reap(&mut sink);
            self.ops.retain(|_, op| op.result.is_none());
            sink.clear();
        }
        true
    }
}

/// The SQE for `op`, and the buffer it points into.
fn build_op(op: FileOp) -> (squeue::Entry, Vec<u8>) {
    // Lengths above what one SQE takes become short transfers, which
    // callers handle as they do a short `pread`/`pwrite`.
    fn len32(buf: &[u8]) -> u32 {
        buf.len().min(1 << 30) as u32
    }
    match op {
        FileOp::Read {
            fd,
            offset,
            mut buf,
            at,
        } => {
            let tail = &mut buf[at..];
            let e = opcode::Read::new(types::Fd(fd), tail.as_mut_ptr(), len32(tail))
                .offset(offset)
                .build();
            (e, buf)
        }
        FileOp::Write {
            fd,
            offset,
            buf,
            at,
        } => {
            let tail = &buf[at..];
            let e = opcode::Write::new(types::Fd(fd), tail.as_ptr(), len32(tail))
                .offset(offset)
                .build();
            (e, buf)
        }
        FileOp::Fsync { fd, datasync } => {
            let flags = if datasync {
                types::FsyncFlags::DATASYNC
            } else {
                types::FsyncFlags::empty()
            };
            let e = opcode::Fsync::new(types::Fd(fd)).flags(flags).build();
            (e, Vec::new())
        }
        FileOp::Fallocate {
            fd,
            mode,
            offset,
            len,
        } => {
            let e = opcode::Fallocate::new(types::Fd(fd), len)
                .offset(offset)
                .mode(mode)
                .build();
            (e, Vec::new())
        }
    }
}

impl std::os::fd::AsFd for Uring {
    /// The ring's fd: readable while completions wait in its queue.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        trace::luring_cleanup_state(self.ptr());
        if self.ops.values().any(|op| op.result.is_none()) && !self.drain_ops() {
            // The kernel may still write into these buffers: leak them.
            std::mem::forget(std::mem::take(&mut self.ops));
        }
    }
}

impl Uring {
    fn pri_fd(&self) -> Option<RawFd> {
        self.pri.as_ref().map(|e| e.as_fd().as_raw_fd())
    }

    /// Registers `fd` with the nested epoll for `PRI` (see `pri`).
    fn register_pri(&mut self, fd: BorrowedFd<'_>, interest: u32) -> io::Result<()> {
        if self.pri.is_none() {
            let e = Epoll::new()?;
            self.register_poll(e.as_fd(), events::IN)?;
            self.pri = Some(e);
        }
        self.deregister_poll(fd);
        self.pri
            .as_mut()
            .expect("created above")
            .register(fd, interest)
    }

    fn register_poll(&mut self, fd: BorrowedFd<'_>, interest: u32) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & GEN_MASK;
        if let Some(old) = self.regs.get(&raw) {
            if old.interest == interest && !old.failed {
                return Ok(());
            }
            if old.armed {
                let ud = old.user_data(raw);
                self.push_ignored(opcode::PollRemove::new(ud).build())?;
            }
        }
        self.regs.insert(
            raw,
            Reg {
                interest,
                generation,
                armed: false,
                failed: false,
            },
        );
        self.to_arm.push(raw);
        Ok(())
    }

    /// Removes `fd`'s poll; true if it had one.
    fn deregister_poll(&mut self, fd: BorrowedFd<'_>) -> bool {
        self.forget(fd.as_raw_fd())
    }

    /// Removes the poll of fd number `raw`, open or not; true if it had
    /// one. A poll holds a reference to its file, so without this a file
    /// closed while registered would stay open in the kernel (its peer
    /// never seeing the close) until the ring is dropped.
    pub(crate) fn forget(&mut self, raw: RawFd) -> bool {
        let Some(old) = self.regs.remove(&raw) else {
            return false;
        };
        if old.armed {
            // Quiet on failure, as epoll's: the ring is then broken and the
            // next `wait` reports it.
            let ud = old.user_data(raw);
            if self
                .push_ignored(opcode::PollRemove::new(ud).build())
                .is_ok()
            {
                let _ = self.flush();
            }
        }
        true
    }
}

impl FdMonitor for Uring {
    fn register(&mut self, fd: BorrowedFd<'_>, interest: u32) -> io::Result<()> {
        if interest & events::PRI != 0 && interest & EDGE == 0 {
            return self.register_pri(fd, interest);
        }
        if let Some(pri) = &mut self.pri {
            pri.deregister(fd);
        }
        self.register_poll(fd, interest)
    }

    fn deregister(&mut self, fd: BorrowedFd<'_>) {
        if !self.deregister_poll(fd) {
            if let Some(pri) = &mut self.pri {
                pri.deregister(fd);
            }
        }
    }

    fn wait(&mut self, timeout_ns: i64, out: &mut Vec<Ready>) -> io::Result<()> {
        self.arm_pending()?;
        let timeout_ns = if self.stash.is_empty() { timeout_ns } else { 0 };
        let queued = self.ring.submission().len();
        let r = if timeout_ns == 0 {
            // Nothing to wait for: enter the kernel only to submit, or to
            // flush completions the kernel holds back (`kernel_has_more`).
            if queued == 0 && !self.kernel_has_more() {
                Ok(0)
            } else {
                // `submit` adds GETEVENTS when the kernel holds some back.
                self.ring.submit()
            }
        } else if timeout_ns < 0 {
            self.ring.submit_and_wait(1)
        } else {
            let ts = types::Timespec::new()
                .sec((timeout_ns / 1_000_000_000) as u64)
                .nsec((timeout_ns % 1_000_000_000) as u32);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        };
        if queued > 0 {
            let ret = match &r {
                Ok(n) => *n as i32,
                Err(e) => -e.raw_os_error().unwrap_or(0),
            };
            trace::luring_io_uring_submit(self.ptr(), ret);
        }
        match r {
            Ok(_) => {}
            // Interrupted, timed out, or completions to reap first.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc_errno::EINTR | libc_errno::ETIME | libc_errno::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        self.reap(out);
        Ok(())
    }
}

/// QEMU's request types (`QEMU_AIO_*` in include/block/raw-aio.h), which
/// its `luring_co_submit` trace event reports.
mod qemu_aio {
    pub(super) const READ: i32 = 0x0001;
    pub(super) const WRITE: i32 = 0x0002;
    pub(super) const FLUSH: i32 = 0x0008;
    pub(super) const DISCARD: i32 = 0x0010;
    pub(super) const WRITE_ZEROES: i32 = 0x0020;
    pub(super) const TRUNCATE: i32 = 0x0080;

    /// The type QEMU gives what a `fallocate` of `mode` does: punching a
    /// hole is a discard, zeroing a range a write of zeroes, and plain
    /// allocation its preallocation (which QEMU runs as a truncate).
    pub(super) fn fallocate(mode: i32) -> i32 {
        const PUNCH_HOLE: i32 = 0x02;
        const ZERO_RANGE: i32 = 0x10;
        if mode & PUNCH_HOLE != 0 {
            DISCARD
        } else if mode & ZERO_RANGE != 0 {
            WRITE_ZEROES
        } else {
            TRUNCATE
        }
    }
}

/// The errno values this file tests for (rustix's `Errno` without a
/// dependency on libc).
mod libc_errno {
    use rustix::io::Errno;
    pub(super) const EINTR: i32 = Errno::INTR.raw_os_error();
    pub(super) const EBUSY: i32 = Errno::BUSY.raw_os_error();
    pub(super) const ETIME: i32 = Errno::TIME.raw_os_error();
    pub(super) const ECANCELED: i32 = Errno::CANCELED.raw_os_error();
}

/// What the context's adaptive polling asks the ring (QEMU's
/// `fdmon_io_uring_need_wait`): every registered fd has a poll in the ring
/// once the queued ones are submitted, and its readiness arrives as a CQE,
/// so "is there work" is a look at the completion queue's indexes in shared
/// memory, not a system call.
impl Uring {
    /// Submits the polls and operations queued so far (one
    /// `io_uring_enter` if any), so that from now on every registered fd's
    /// readiness and every operation's completion shows in the completion
    /// queue. The spin calls this once before it starts.
    pub(crate) fn submit_pending(&mut self) -> io::Result<()> {
        self.arm_pending()?;
        self.flush()
    }

    /// Whether a `wait` would find work without blocking: completions in
    /// the queue (or stashed), or held back by the kernel. No system call.
    pub(crate) fn has_completions(&mut self) -> bool {
        !self.stash.is_empty() || !self.ring.completion().is_empty() || self.kernel_has_more()
    }

    /// The kernel holds completions it has not posted: task work waiting
    /// for this thread (`IORING_SQ_TASKRUN`, set only with
    /// `IORING_SETUP_TASKRUN_FLAG`) or an overflowed completion queue
    /// (`IORING_SQ_CQ_OVERFLOW`). Either needs an `io_uring_enter` with
    /// `GETEVENTS`, which `submit` makes when it sees them.
    fn kernel_has_more(&mut self) -> bool {
        let sq = self.ring.submission();
        sq.taskrun() || sq.cq_overflow()
    }
}

#[cfg(all(test, not(loom)))]
impl Uring {
    /// Number of registered fds (tests).
    pub(crate) fn registrations(&self) -> usize {
        self.regs.len()
    }
}
