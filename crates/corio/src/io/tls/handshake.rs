//! The TLS handshake: one non-blocking step, driven either as a QIOTask by
//! watches on the master in a context (QEMU's `qio_channel_tls_handshake`)
//! or synchronously, yielding the coroutine or polling between steps.

use std::io;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::{Arc, Mutex};

use super::session::{feed, State};
use super::{dn, lock, Channel, Endpoint, TlsChannel, TlsError};
use crate::aio::{events, AioContext};
use crate::io::task::Task;
use crate::io::watch::WatchFunc;
use crate::main_loop::main_context;
use crate::trace;

/// What a handshake step needs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The handshake completed and the peer was accepted.
    Done,
    /// The master must become ready for this condition (`IN` or `OUT`).
    Want(u32),
}

/// QEMU's `QCryptoTLSSessionHandshakeStatus`, for the pending trace event.
fn status(cond: u32) -> i32 {
    if cond == events::OUT {
        1 // QCRYPTO_TLS_HANDSHAKE_SENDING
    } else {
        2 // QCRYPTO_TLS_HANDSHAKE_RECVING
    }
}

/// Clears the running flag when a handshake ends, however it ends.
struct Running<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        // Pairs with the Acquire swap in `begin`: the next handshake sees
        // everything this one did.
        self.0.store(false, Release);
    }
}

impl<C: Channel> TlsChannel<C> {
    /// Marks a handshake as running.
    fn begin(&self) -> Result<(), TlsError> {
        // Acquire pairs with the Release store of `Running::drop`.
        if self.session.handshaking.swap(true, Acquire) {
            return Err(TlsError::Config(
                "A TLS handshake is already running on this channel".into(),
            ));
        }
        Ok(())
    }

    /// Runs the handshake as far as it goes without waiting (QEMU's
    /// `qcrypto_tls_session_handshake` plus, at the end,
    /// `qcrypto_tls_session_check_credentials`).
    fn handshake_step(&self) -> Result<Step, TlsError> {
        let r = self.step_inner();
        if let Err(e) = &r {
            self.fail(e);
            self.flush_nowait(); // the alert telling the peer why, if any
        }
        r
    }

    fn step_inner(&self) -> Result<Step, TlsError> {
        let s = &*self.session;
        loop {
            // Send what rustls queued first: it reads nothing more before.
            match self.flush(&mut lock(&s.wr), super::Flush::Wait) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Step::Want(events::OUT))
                }
                Err(e) => {
                    return Err(TlsError::Io {
                        what: "sending to the peer",
                        source: e,
                    })
                }
            }
            {
                let conn = lock(&s.conn);
                match &conn.state {
                    State::Ready => return Ok(Step::Done),
                    State::Failed(why) => {
                        return Err(TlsError::Config(format!(
                            "TLS session failed earlier: {why}"
                        )))
                    }
                    State::Handshaking => {}
                }
                if !conn.tls.is_handshaking() && !conn.tls.wants_write() {
                    drop(conn);
                    self.check_credentials()?;
                    return Ok(Step::Done);
                }
            }
            let mut rd = lock(&s.rd);
            if rd.start == rd.end {
                match self.fill(&mut rd) {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(TlsError::Io {
                            what: "reading from the peer",
                            source: io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the peer closed the connection during the handshake",
                            ),
                        })
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(Step::Want(events::IN))
                    }
                    Err(e) => {
                        return Err(TlsError::Io {
                            what: "reading from the peer",
                            source: e,
                        })
                    }
                }
            }
            let mut conn = lock(&s.conn);
            match feed(&mut conn.tls, &mut rd) {
                Ok(true) => {}
                Ok(false) if !conn.tls.wants_write() && conn.tls.is_handshaking() => {
                    return Err(TlsError::Handshake {
                        reason: "rustls takes no more handshake data".into(),
                        source: None,
                    });
                }
                Ok(false) => {}
                Err(e) => return Err(TlsError::handshake(e, s.hostname.as_deref())),
            }
        }
    }

    /// QEMU's `qcrypto_tls_session_check_credentials` once rustls finished:
    /// the chain and host name were checked by rustls; here the peer's
    /// name is recorded and the server's authz, if any, consulted.
    fn check_credentials(&self) -> Result<(), TlsError> {
        let s = &*self.session;
        let mut conn = lock(&s.conn);
        trace::qio_channel_tls_handshake_complete(self.ptr());
        let name = conn
            .tls
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| dn::subject_dn(c));
        conn.peer_name = name.clone();
        let verdict = if !s.verify_peer {
            trace::qcrypto_tls_session_check_creds(self.ptr(), "skip");
            Ok(())
        } else {
            let r = match (&name, &s.authz) {
                (None, _) if s.endpoint == Endpoint::Server => Err(TlsError::Handshake {
                    reason: "No certificate peers".into(),
                    source: None,
                }),
                (Some(n), Some(authz)) if !authz.is_allowed(n) => Err(TlsError::Denied(n.clone())),
                _ => Ok(()),
            };
            let status = if r.is_ok() { "pass" } else { "fail" };
            trace::qcrypto_tls_session_check_creds(self.ptr(), status);
            r
        };
        match verdict {
            Ok(()) => {
                trace::qio_channel_tls_credentials_allow(self.ptr());
                conn.state = State::Ready;
                Ok(())
            }
            Err(e) => {
                trace::qio_channel_tls_credentials_deny(self.ptr());
                conn.state = State::Failed(e.to_string());
                Err(e)
            }
        }
    }

    /// Performs the handshake, yielding the calling coroutine while the
    /// master would block, or blocking in poll(2) outside a coroutine (the
    /// coroutine form of QEMU's handshake: `qio_channel_tls_handshake` then
    /// waiting for its task). Returns at once if the handshake already
    /// completed.
    ///
    /// # Thread context
    /// Any; in a coroutine it sleeps in the coroutine's context.
    ///
    /// # Errors
    /// An [`io::Error`] carrying the [`TlsError`]
    /// ([`TlsError::from_io`]): [`TlsError::Handshake`] with the reason (a
    /// certificate not signed by the CA: "certificate verify failed: The
    /// certificate hasn't got a known issuer"; a wrong host name:
    /// "Certificate does not match the hostname"; no client certificate
    /// where one is required: "No certificate peers"; an alert from the
    /// peer), kind [`InvalidData`](io::ErrorKind::InvalidData);
    /// [`TlsError::Denied`] from the authz check, kind
    /// [`PermissionDenied`](io::ErrorKind::PermissionDenied);
    /// [`TlsError::Io`] if the master fails or the peer hangs up, with the
    /// master's kind; [`TlsError::Config`] if another handshake is running.
    pub fn handshake_sync(&self) -> io::Result<()> {
        self.begin()?;
        let _running = Running(&self.session.handshaking);
        trace::qio_channel_tls_handshake_start(self.ptr());
        loop {
            match self.handshake_step() {
                Ok(Step::Done) => return Ok(()),
                Ok(Step::Want(cond)) => {
                    trace::qio_channel_tls_handshake_pending(self.ptr(), status(cond));
                    if let Err(e) = self.wait_io(cond) {
                        let e = TlsError::Io {
                            what: "waiting for the peer",
                            source: e,
                        };
                        self.fail(&e);
                        trace::qio_channel_tls_handshake_fail(self.ptr());
                        return Err(e.into());
                    }
                }
                Err(e) => {
                    trace::qio_channel_tls_handshake_fail(self.ptr());
                    return Err(e.into());
                }
            }
        }
    }
}

/// The handshake QIOTask: its source is the channel, until the completion
/// takes it.
type HandshakeTask<C> = Task<Option<TlsChannel<C>>>;

/// The channel of a running handshake task.
fn channel<C: Channel>(task: &HandshakeTask<C>) -> &TlsChannel<C> {
    let ch = task.source().as_ref();
    ch.expect("the handshake task has its channel until it completes")
}

impl<C: Channel + 'static> TlsChannel<C> {
    /// Starts the handshake as a QIOTask (QEMU's
    /// `qio_channel_tls_handshake`): each step runs in `ctx` (the main
    /// loop's context when `None`) when the master is ready for it, and
    /// `completion` runs there once it ends, with the channel, or with the
    /// error; the channel is then dropped, which closes the master. The
    /// completion owns the channel: it may keep it, move it on, or wrap it
    /// (QEMU's VNC server wraps it in a WebSocket channel,
    /// [`WebsockChannel::new_server`](crate::io::WebsockChannel::new_server)).
    ///
    /// Unlike QEMU, which runs the first step (and, if the handshake fails
    /// at once, the completion) in the caller's thread, every step and the
    /// completion run in `ctx`'s thread: the caller may be anywhere.
    ///
    /// # Thread context
    /// Any thread; `completion` runs on `ctx`'s home thread. If `ctx` is
    /// dropped first, the completion is dropped unrun.
    ///
    /// # Errors
    /// Given to `completion`: an [`io::Error`] carrying the [`TlsError`],
    /// as from [`handshake_sync`](Self::handshake_sync).
    ///
    /// # Panics
    /// With `ctx` `None`, if no main loop is bound and the caller is not the
    /// process's main thread ([`crate::main_loop::main_context`]).
    ///
    /// # Examples
    ///
    /// A client whose peer hangs up at once (a handshake that succeeds is
    /// in the tests: it needs certificates):
    ///
    /// ```
    /// use corio::io::tls::{Endpoint, TlsChannel, TlsCreds, TlsError, X509Pem};
    /// use corio::io::SocketChannel;
    /// use corio::AioContext;
    /// use std::sync::mpsc;
    ///
    /// // verify-peer off: no CA needed to build the client.
    /// let creds = TlsCreds::x509_from_pem(Endpoint::Client, &X509Pem::default(), false)?;
    /// let (a, b) = SocketChannel::pair()?;
    /// drop(b);
    /// let ctx = AioContext::new()?;
    /// let (tx, rx) = mpsc::channel();
    /// TlsChannel::new_client(a, &creds, None)?
    ///     .handshake(move |r| tx.send(r.map(|_tls| ())).unwrap(), Some(&ctx));
    /// // The completion may already have run: look before blocking.
    /// let result = loop {
    ///     if let Ok(r) = rx.try_recv() {
    ///         break r;
    ///     }
    ///     ctx.poll(true);
    /// };
    /// let err = result.unwrap_err();
    /// assert!(matches!(TlsError::from_io(&err), Some(TlsError::Io { .. })), "{err}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn handshake(
        self,
        completion: impl FnOnce(io::Result<TlsChannel<C>>) + Send + 'static,
        ctx: Option<&AioContext>,
    ) {
        let ctx = ctx.cloned().unwrap_or_else(main_context);
        trace::qio_channel_tls_handshake_start(self.ptr());
        let begun = self.begin();
        let mut task = Task::new(Some(self), move |t: &mut HandshakeTask<C>| {
            let ch = t.source_mut().take();
            let r = match t.propagate_error() {
                Ok(()) => ch.ok_or_else(|| io::Error::other("TLS handshake lost its channel")),
                Err(e) => Err(match e.downcast::<io::Error>() {
                    Ok(e) => *e,
                    Err(e) => io::Error::other(e),
                }),
            };
            completion(r);
        });
        if let Err(e) = begun {
            task.set_error(io::Error::from(e));
            let run = move || task.complete();
            if ctx.in_home_thread() {
                run();
            } else {
                ctx.bh_schedule_oneshot(run);
            }
            return;
        }
        if ctx.in_home_thread() {
            Self::handshake_task(task, ctx);
        } else {
            let c = ctx.clone();
            ctx.bh_schedule_oneshot(move || Self::handshake_task(task, c));
        }
    }

    /// Ends the handshake task, with `err` if it failed.
    fn handshake_end(mut task: HandshakeTask<C>, err: Option<TlsError>) {
        let ioc = channel(&task);
        drop(Running(&ioc.session.handshaking));
        if let Some(e) = err {
            trace::qio_channel_tls_handshake_fail(ioc.ptr());
            task.set_error(io::Error::from(e));
        }
        task.complete();
    }

    /// One step of the task (QEMU's `qio_channel_tls_handshake_task`): ends
    /// the task, or watches the master for what the next step needs.
    ///
    /// # Thread context
    /// `ctx`'s home thread.
    fn handshake_task(task: HandshakeTask<C>, ctx: AioContext) {
        let ioc = channel(&task);
        let cond = match ioc.handshake_step() {
            Ok(Step::Done) => return Self::handshake_end(task, None),
            Err(e) => return Self::handshake_end(task, Some(e)),
            Ok(Step::Want(cond)) => cond,
        };
        trace::qio_channel_tls_handshake_pending(ioc.ptr(), status(cond));
        // The watch owns the task from here until it fires. It cannot fire
        // before the task is in its slot: it dispatches on this thread
        // (ctx's home thread), from the event loop or a bottom half.
        let slot = Arc::new(Mutex::new(None));
        let s2 = slot.clone();
        let c2 = ctx.clone();
        let func: WatchFunc = Box::new(move |_cond| {
            if let Some(t) = lock(&s2).take() {
                Self::handshake_task(t, c2.clone());
            }
            false
        });
        let watched = cond | events::HUP | events::ERR | events::NVAL;
        match ioc.master.add_watch(watched, func, None, Some(&ctx)) {
            Ok(_) => *lock(&slot) = Some(task),
            Err(e) => {
                let e = TlsError::Io {
                    what: "watching the master",
                    source: e,
                };
                ioc.fail(&e);
                Self::handshake_end(task, Some(e));
            }
        }
    }
}
