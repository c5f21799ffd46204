//! The event list, like QEMU's `trace-events` files: one line per event with
//! its arguments and its log format. Names are QEMU's where QEMU has the event.

use super::{paste_fn, trace_events};

type Ptr = *const ();

trace_events! {
    // util/qemu-coroutine.c
    /// A coroutine is entered: `from` is the enterer (null outside a coroutine).
    qemu_aio_coroutine_enter(ctx: Ptr, from: Ptr, to: Ptr, opaque: Ptr)
        "ctx {ctx:p} from {from:p} to {to:p} opaque {opaque:p}";
    /// A coroutine yields back to the one that entered it.
    qemu_coroutine_yield(from: Ptr, to: Ptr) "from {from:p} to {to:p}";
    /// A coroutine returned (or panicked) and gives its stack back to the pool.
    qemu_coroutine_terminate(co: Ptr) "self {co:p}";
    /// A coroutine woken before any context existed is dropped with its
    /// thread, which exits without one: it can never run (ours: QEMU has no
    /// event here). See `coroutine::orphans_dropped`.
    coroutine_orphan_dropped(co: Ptr) "co {co:p}";

    // util/async.c
    /// `co_schedule` pushed a coroutine onto a context's queue.
    aio_co_schedule(ctx: Ptr, co: Ptr) "ctx {ctx:p} co {co:p}";
    /// The context's co_schedule bottom half enters a queued coroutine.
    aio_co_schedule_bh_cb(ctx: Ptr, co: Ptr) "ctx {ctx:p} co {co:p}";
    /// A bottom half was scheduled (ours: QEMU has no event here).
    aio_bh_schedule(ctx: Ptr, bh: Ptr, name: &str) "ctx {ctx:p} bh {bh:p} name {name}";
    /// A bottom half's callback runs (ours).
    aio_bh_call(ctx: Ptr, bh: Ptr, name: &str) "ctx {ctx:p} bh {bh:p} name {name}";
    /// A bottom half was re-entered while its callback was running.
    reentrant_aio(ctx: Ptr, name: &str) "ctx {ctx:p} name {name}";

    // util/aio-posix.c
    /// A blocking or non-blocking `poll` starts (ours); timeout in ns, -1 = none.
    aio_poll_begin(ctx: Ptr, blocking: bool, timeout: i64) "ctx {ctx:p} blocking {blocking} timeout {timeout}";
    /// A `poll` ends (ours).
    aio_poll_end(ctx: Ptr, progress: bool) "ctx {ctx:p} progress {progress}";
    /// Adaptive polling starts spinning (`timeout`: how long at most, ns).
    run_poll_handlers_begin(ctx: Ptr, max_ns: i64, timeout: i64) "ctx {ctx:p} max_ns {max_ns} timeout {timeout}";
    /// Adaptive polling stops spinning; `progress`: work arrived.
    run_poll_handlers_end(ctx: Ptr, progress: bool, timeout: i64) "ctx {ctx:p} progress {progress} timeout {timeout}";
    /// The spin time shrinks.
    poll_shrink(ctx: Ptr, old: i64, new: i64) "ctx {ctx:p} old {old} new {new}";
    /// The spin time grows.
    poll_grow(ctx: Ptr, old: i64, new: i64) "ctx {ctx:p} old {old} new {new}";
    /// An fd handler is added or changed.
    poll_add(ctx: Ptr, node: Ptr, fd: i32, revents: u32) "ctx {ctx:p} node {node:p} fd {fd} revents 0x{revents:x}";
    /// An fd handler is removed.
    poll_remove(ctx: Ptr, node: Ptr, fd: i32) "ctx {ctx:p} node {node:p} fd {fd}";
    // util/fdmon-io_uring.c (QEMU falls back silently: ours)
    /// A context asked for the io_uring fd monitor and got epoll: `errno`
    /// and `reason` say why (ENOSYS, EPERM from seccomp, ENOMEM, ...).
    fdmon_io_uring_fallback(ctx: Ptr, errno: i32, reason: &str) "ctx {ctx:p} errno {errno} reason {reason}";

    // block/io_uring.c
    /// A context's ring was set up (`size`: submission queue entries).
    luring_init_state(s: Ptr, size: usize) "s {s:p} size {size}";
    /// A context's ring is torn down, after its operations in flight ended.
    luring_cleanup_state(s: Ptr) "{s:p} freed";
    /// A coroutine queued a file operation on the file `bs` (an `AioFile`;
    /// QEMU's BlockDriverState): `luringcb` is the operation's id (QEMU's
    /// LuringAIOCB pointer), `op_type` QEMU's `QEMU_AIO_*` value: 0x1 read,
    /// 0x2 write, 0x8 flush (fsync), fallocate 0x10 (punch hole), 0x20
    /// (zero range) or 0x80 (allocation).
    luring_co_submit(bs: Ptr, s: Ptr, luringcb: u64, fd: i32, offset: u64, nbytes: usize, op_type: i32) "bs {bs:p} s {s:p} luringcb {luringcb} fd {fd} offset {offset} nbytes {nbytes} type {op_type}";
    /// A file operation's completion was reaped; `ret` is its result (negative errno).
    luring_process_completion(s: Ptr, luringcb: u64, ret: i32) "LuringState {s:p} luringcb {luringcb} ret {ret}";
    /// A read that came back short is submitted again for the rest
    /// (`AioFile::read_full_at`); `nread`: bytes read so far.
    luring_resubmit_short_read(s: Ptr, luringcb: u64, nread: i32) "LuringState {s:p} luringcb {luringcb} nread {nread}";
    /// `io_uring_enter` submitted queued operations (`ret`: how many, or a negative errno).
    luring_io_uring_submit(s: Ptr, ret: i32) "LuringState {s:p} ret {ret}";
    // ours: iothread.rs
    /// A callback on an IoThread panicked; the loop goes on.
    iothread_callback_panic(ctx: Ptr) "ctx {ctx:p}";
    // util/qemu-coroutine-lock.c
    /// `CoMutex::lock` took a free mutex without waiting.
    qemu_co_mutex_lock_uncontended(mutex: Ptr, co: Ptr) "mutex {mutex:p} self {co:p}";
    /// `CoMutex::lock` found the mutex held and queues itself.
    qemu_co_mutex_lock_entry(mutex: Ptr, co: Ptr) "mutex {mutex:p} self {co:p}";
    /// A queued `CoMutex::lock` was handed the mutex.
    qemu_co_mutex_lock_return(mutex: Ptr, co: Ptr) "mutex {mutex:p} self {co:p}";
    /// `CoMutex::unlock` starts.
    qemu_co_mutex_unlock_entry(mutex: Ptr, co: Ptr) "mutex {mutex:p} self {co:p}";
    /// `CoMutex::unlock` handed the mutex to a waiter (or to a locker in flight).
    qemu_co_mutex_unlock_return(mutex: Ptr, co: Ptr) "mutex {mutex:p} self {co:p}";

    // util/thread-pool.c
    /// A request was queued on a context's thread pool.
    thread_pool_submit_aio(pool: Ptr, req: Ptr, opaque: Ptr) "pool {pool:p} req {req:p} opaque {opaque:p}";
    /// A request's completion runs in the submitting context; `ret` is 0 or a negative errno.
    thread_pool_complete_aio(pool: Ptr, req: Ptr, opaque: Ptr, ret: i32) "pool {pool:p} req {req:p} opaque {opaque:p} ret {ret}";
    /// A request is being cancelled.
    thread_pool_cancel_aio(req: Ptr, opaque: Ptr) "req {req:p} opaque {opaque:p}";

    // io/task.c
    /// A QIOTask was created.
    qio_task_new(task: Ptr, source: Ptr, func: Ptr, opaque: Ptr) "Task new task={task:p} source={source:p} func={func:p} opaque={opaque:p}";
    /// A QIOTask's completion runs.
    qio_task_complete(task: Ptr) "Task complete task={task:p}";
    /// `run_in_thread` starts a worker thread.
    qio_task_thread_start(task: Ptr, worker: Ptr, opaque: Ptr) "Task thread start task={task:p} worker={worker:p} opaque={opaque:p}";
    /// The worker runs on its thread.
    qio_task_thread_run(task: Ptr) "Task thread run task={task:p}";
    /// The worker returned; its thread exits.
    qio_task_thread_exit(task: Ptr) "Task thread exit task={task:p}";
    /// The completion of a threaded task runs in its context.
    qio_task_thread_result(task: Ptr) "Task thread result task={task:p}";
    /// The completion was scheduled on the task's context.
    qio_task_thread_source_attach(task: Ptr, ctx: Ptr) "Task thread source attach task={task:p} source={ctx:p}";
    /// `wait_thread` ran the completion itself instead of the context.
    qio_task_thread_source_cancel(task: Ptr, ctx: Ptr) "Task thread source cancel task={task:p} source={ctx:p}";

    // io/channel-socket.c
    /// A socket channel was created.
    qio_channel_socket_new(ioc: Ptr) "Socket new ioc={ioc:p}";
    /// A socket channel wraps an existing fd.
    qio_channel_socket_new_fd(ioc: Ptr, fd: i32) "Socket new ioc={ioc:p} fd={fd}";
    /// `connect_sync` starts.
    qio_channel_socket_connect_sync(addr: Ptr, uri: &str) "Socket connect sync addr={addr:p} uri={uri}";
    /// `connect_async` starts.
    qio_channel_socket_connect_async(addr: Ptr, uri: &str) "Socket connect async addr={addr:p} uri={uri}";
    /// A connect failed.
    qio_channel_socket_connect_fail(addr: Ptr) "Socket connect fail addr={addr:p}";
    /// A connect succeeded.
    qio_channel_socket_connect_complete(ioc: Ptr, fd: i32) "Socket connect complete ioc={ioc:p} fd={fd}";
    /// `listen_sync` starts.
    qio_channel_socket_listen_sync(addr: Ptr, uri: &str, num: i32) "Socket listen sync addr={addr:p} uri={uri} num={num}";
    /// `listen_async` starts.
    qio_channel_socket_listen_async(addr: Ptr, uri: &str, num: i32) "Socket listen async addr={addr:p} uri={uri} num={num}";
    /// A listen failed.
    qio_channel_socket_listen_fail(addr: Ptr) "Socket listen fail addr={addr:p}";
    /// A listen succeeded.
    qio_channel_socket_listen_complete(ioc: Ptr, fd: i32) "Socket listen complete ioc={ioc:p} fd={fd}";
    /// `accept` starts.
    qio_channel_socket_accept(ioc: Ptr) "Socket accept start ioc={ioc:p}";
    /// An accept failed.
    qio_channel_socket_accept_fail(ioc: Ptr) "Socket accept fail ioc={ioc:p}";
    /// An accept succeeded.
    qio_channel_socket_accept_complete(ioc: Ptr, cioc: Ptr, fd: i32) "Socket accept complete ioc={ioc:p} client={cioc:p} fd={fd}";

    // util/qemu-sockets.c
    /// A socket starts listening with backlog `num`.
    socket_listen(num: i32) "backlog: {num}";

    // io/channel-file.c
    /// A file channel wraps an fd.
    qio_channel_file_new_fd(ioc: Ptr, fd: i32) "File new fd ioc={ioc:p} fd={fd}";
    /// A file channel opened a path.
    qio_channel_file_new_path(ioc: Ptr, path: &str, flags: u32, mode: u32, fd: i32) "File new fd ioc={ioc:p} path={path} flags={flags} mode={mode} fd={fd}";

    // io/net-listener.c (QEMU has no events there: ours)
    /// `open_sync` listened on `n` sockets for `uri`.
    qio_net_listener_open(listener: Ptr, uri: &str, n: i32) "Net listener open listener={listener:p} uri={uri} sockets={n}";
    /// A client was accepted and is handed to the callback.
    qio_net_listener_callback(listener: Ptr, fd: i32) "Net listener callback listener={listener:p} client fd={fd}";
    /// The listener closes its sockets.
    qio_net_listener_disconnect(listener: Ptr) "Net listener disconnect listener={listener:p}";

    // io/channel-websock.c
    /// A WebSocket server channel wraps `master`.
    qio_channel_websock_new_server(ioc: Ptr, master: Ptr) "Websock new client ioc={ioc:p} master={master:p}";
    /// The HTTP upgrade handshake starts.
    qio_channel_websock_handshake_start(ioc: Ptr) "Websock handshake start ioc={ioc:p}";
    /// The handshake waits for the master to have `status` (`events::IN` or `OUT`).
    qio_channel_websock_handshake_pending(ioc: Ptr, status: u32) "Websock handshake pending ioc={ioc:p} status={status}";
    /// The request was read; its reply (101 or an HTTP error) is being sent.
    qio_channel_websock_handshake_reply(ioc: Ptr) "Websock handshake reply ioc={ioc:p}";
    /// The handshake failed.
    qio_channel_websock_handshake_fail(ioc: Ptr, msg: &str) "Websock handshake fail ioc={ioc:p} err={msg}";
    /// The handshake succeeded: the channel carries WebSocket frames now.
    qio_channel_websock_handshake_complete(ioc: Ptr) "Websock handshake complete ioc={ioc:p}";
    /// The request line of the client's HTTP request.
    qio_channel_websock_http_greeting(ioc: Ptr, greeting: &str) "Websocket HTTP request ioc={ioc:p} greeting='{greeting}'";
    /// The upgrade headers of the client's HTTP request.
    qio_channel_websock_http_request(ioc: Ptr, protocols: &str, version: &str, host: &str, connection: &str, upgrade: &str, key: &str)
        "Websocket HTTP request ioc={ioc:p} protocols='{protocols}' version='{version}' host='{host}' connection='{connection}' upgrade='{upgrade}' key='{key}'";
    /// The first two bytes of a frame header were decoded.
    qio_channel_websock_header_partial_decode(ioc: Ptr, payload_len: usize, fin: u8, opcode: u8, has_mask: u8)
        "Websocket header decoded ioc={ioc:p} payload-len={payload_len} fin=0x{fin:x} opcode=0x{opcode:x} has_mask=0x{has_mask:x}";
    /// A whole frame header was decoded.
    qio_channel_websock_header_full_decode(ioc: Ptr, header_len: usize, payload_len: u64, mask: u32)
        "Websocket header decoded ioc={ioc:p} header-len={header_len} payload-len={payload_len} mask=0x{mask:x}";
    /// Payload bytes were unmasked; `payload_remain` bytes of the frame are still to come.
    qio_channel_websock_payload_decode(ioc: Ptr, opcode: u8, payload_remain: u64)
        "Websocket header decoded ioc={ioc:p} opcode=0x{opcode:x} payload-remain={payload_remain}";
    /// A frame was encoded for sending.
    qio_channel_websock_encode(ioc: Ptr, opcode: u8, header_len: usize, payload_len: usize)
        "Websocket encoded ioc={ioc:p} opcode=0x{opcode:x} header-len={header_len} payload-len={payload_len}";
    /// The channel closes.
    qio_channel_websock_close(ioc: Ptr) "Websocket close ioc={ioc:p}";

    // io/channel-tls.c (`ioc` is the channel's session: it keeps its address)
    /// A TLS client channel wraps `master`.
    qio_channel_tls_new_client(ioc: Ptr, master: Ptr, creds: Ptr, hostname: &str) "TLS new client ioc={ioc:p} master={master:p} creds={creds:p} hostname={hostname}";
    /// A TLS server channel wraps `master`.
    qio_channel_tls_new_server(ioc: Ptr, master: Ptr, creds: Ptr, aclname: &str) "TLS new server ioc={ioc:p} master={master:p} creds={creds:p} aclname={aclname}";
    /// A handshake starts (task or synchronous).
    qio_channel_tls_handshake_start(ioc: Ptr) "TLS handshake start ioc={ioc:p}";
    /// The handshake waits for the master: status 1 sending, 2 receiving.
    qio_channel_tls_handshake_pending(ioc: Ptr, status: i32) "TLS handshake pending ioc={ioc:p} status={status}";
    /// The handshake failed.
    qio_channel_tls_handshake_fail(ioc: Ptr) "TLS handshake fail ioc={ioc:p}";
    /// The TLS handshake completed; the credentials are checked next.
    qio_channel_tls_handshake_complete(ioc: Ptr) "TLS handshake complete ioc={ioc:p}";
    /// The peer's credentials were accepted.
    qio_channel_tls_credentials_allow(ioc: Ptr) "TLS credentials allow ioc={ioc:p}";
    /// The peer's credentials were refused.
    qio_channel_tls_credentials_deny(ioc: Ptr) "TLS credentials deny ioc={ioc:p}";
    /// `bye` starts sending close_notify.
    qio_channel_tls_bye_start(ioc: Ptr) "TLS termination start ioc={ioc:p}";
    /// `bye` sent close_notify.
    qio_channel_tls_bye_complete(ioc: Ptr) "TLS termination complete ioc={ioc:p}";
    /// `bye` could not send close_notify.
    qio_channel_tls_bye_fail(ioc: Ptr) "TLS termination fail ioc={ioc:p}";

    // crypto/tlscredsx509.c, crypto/tlssession.c
    /// X.509 credentials were loaded (`dir` is `<memory>` for in-memory PEM).
    qcrypto_tls_creds_x509_load(creds: Ptr, dir: &str) "TLS creds x509 load creds={creds:p} dir={dir}";
    /// The peer's credentials were checked: pass, fail or skip (verify-peer off).
    qcrypto_tls_session_check_creds(session: Ptr, status: &str) "TLS session check creds session={session:p} status={status}";
}
