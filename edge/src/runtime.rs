//! Worker threads: one single-threaded tokio runtime per core, each with its own
//! `SO_REUSEPORT` listening sockets and its own upstream connection pools (the model
//! of Envoy's workers and nginx's worker processes).
//!
//! A connection lives its whole life on the worker that accepted it, and the
//! upstream connections it uses belong to that worker too, so a request never wakes
//! another thread. Work is spread by the kernel's `SO_REUSEPORT` hashing. Nothing
//! here knows about HTTP.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker running on this thread (0 outside workers).
pub fn current_worker() -> usize {
    WORKER.with(Cell::get)
}

/// Marks this thread as worker `index`.
pub fn set_current_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// How many workers to run: `configured`, or one per available core when 0.
pub fn worker_count(configured: u32) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    }
}

/// Binds `count` listening sockets on `addr` with `SO_REUSEPORT`, so that each
/// worker accepts on its own. When `addr` has port 0, the port the first socket got
/// is used for the rest.
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// UDP socket buffers for QUIC: a burst of handshakes overflows the kernel's default
/// (about 208 KiB) and drops datagrams. Capped by `net.core.rmem_max`/`wmem_max`.
const UDP_BUFFER: usize = 4 << 20;

/// Binds a UDP socket for a QUIC endpoint on `addr`, with large buffers.
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket
        .set_recv_buffer_size(UDP_BUFFER)
        .and_then(|()| socket.set_send_buffer_size(UDP_BUFFER))
    {
        tracing::warn!(error = %e, "cannot enlarge the QUIC socket buffers");
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
