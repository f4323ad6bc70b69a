//! Packet delay on the wire, in user space: the kernel has no netem, so packets
//! between chosen peers are sent to an NFQUEUE (legacy iptables, inside the
//! namespace) and a holder thread gives each its ACCEPT verdict once the one-way delay
//! has passed. Handshakes are delayed like everything else, so probes and traffic see
//! the same network.
//!
//! One thread serves every namespace: it opens one queue socket per namespace (a
//! netlink socket belongs to the namespace it was opened in) and polls them without
//! blocking, sleeping until the next packet is due, at most [`TICK`]. Outgoing packets
//! are matched by destination, incoming ones by source; each direction carries one
//! one-way delay, so a round trip costs twice it.

use std::collections::{BinaryHeap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::netns::{Host, iptables};

/// Longest sleep between polls: the most a delay can overshoot by.
const TICK: Duration = Duration::from_micros(200);
/// The queue number used in every namespace.
const QUEUE: u16 = 7;

/// One-way delays from one namespace to its peers, changeable while running.
pub type Delays = Arc<Mutex<HashMap<Ipv4Addr, Duration>>>;

/// The holder thread; stops when dropped.
pub struct DelayHolder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DelayHolder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Held {
    due: Instant,
    seq: u64,
    queue: usize,
    msg: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // A min-heap on due time, FIFO among equals.
        (o.due, o.seq).cmp(&(self.due, self.seq))
    }
}

/// Delays the traffic of each `(host, delays)` pair to and from the peers in its
/// map. The rules are installed here; the namespaces' removal removes them.
pub fn start(hosts: Vec<(Host, Delays)>) -> anyhow::Result<DelayHolder> {
    let queue = QUEUE.to_string();
    for (host, _) in &hosts {
        for (chain, dir) in [("OUTPUT", "-o"), ("INPUT", "-i")] {
            iptables(
                host,
                &["-A", chain, dir, "eth0", "-j", "NFQUEUE", "--queue-num", &queue],
            )?;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("world-delay".into())
            .spawn(move || {
                let mut queues = Vec::new();
                for (host, delays) in &hosts {
                    let Some(netns) = &host.netns else {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("{} has no namespace", host.addr)));
                        return;
                    };
                    match open_in(netns) {
                        Ok(q) => queues.push((q, delays.clone())),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                hold(queues, &stop);
            })
            .context("starting the delay thread")?
    };
    ready_rx
        .recv()
        .context("the delay thread ended before opening its queues")??;
    Ok(DelayHolder {
        stop,
        thread: Some(thread),
    })
}

/// Opens and binds a queue inside namespace `netns` (this thread moves into it).
fn open_in(netns: &str) -> anyhow::Result<nfq::Queue> {
    let file = std::fs::File::open(format!("/run/netns/{netns}")).with_context(|| format!("opening netns {netns}"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering netns {netns}"))?;
    // The next namespace's queue is opened after entering that one; this socket
    // stays where it was opened.
    let mut q = nfq::Queue::open().context("opening an NFQUEUE socket")?;
    q.bind(QUEUE).context("binding the queue")?;
    // Only the IP header is needed to find the peer.
    q.set_copy_range(QUEUE, 40).context("setting the copy range")?;
    q.set_queue_max_len(QUEUE, 1 << 17)
        .context("setting the queue length")?;
    q.set_nonblocking(true);
    Ok(q)
}

fn accept(q: &mut nfq::Queue, mut msg: nfq::Message) {
    msg.set_verdict(nfq::Verdict::Accept);
    let _ = q.verdict(msg);
}

fn hold(mut queues: Vec<(nfq::Queue, Delays)>, stop: &AtomicBool) {
    let mut heap = BinaryHeap::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while heap.peek().is_some_and(|h: &Held| h.due <= now) {
            if let Some(h) = heap.pop() {
                accept(&mut queues[h.queue].0, h.msg);
            }
        }
        let mut got = false;
        for (i, (q, delays)) in queues.iter_mut().enumerate() {
            // Drain what is waiting on this queue.
            while let Ok(msg) = q.recv() {
                got = true;
                let payload = msg.get_payload();
                let peer = if payload.len() >= 20 {
                    // Outgoing: the destination; incoming: the source (hook 1 is
                    // LOCAL_IN).
                    let at = if msg.get_hook() == 1 { 12 } else { 16 };
                    Some(Ipv4Addr::new(
                        payload[at],
                        payload[at + 1],
                        payload[at + 2],
                        payload[at + 3],
                    ))
                } else {
                    None
                };
                let delay = peer
                    .and_then(|p| delays.lock().ok().and_then(|d| d.get(&p).copied()))
                    .unwrap_or_default();
                if delay.is_zero() {
                    accept(q, msg);
                } else {
                    seq += 1;
                    heap.push(Held {
                        due: Instant::now() + delay,
                        seq,
                        queue: i,
                        msg,
                    });
                }
            }
        }
        if !got {
            let wait = heap
                .peek()
                .map_or(TICK, |h| h.due.saturating_duration_since(Instant::now()).min(TICK));
            std::thread::sleep(wait);
        }
    }
    // Let everything still held through, so nothing hangs on the way out.
    while let Some(h) = heap.pop() {
        accept(&mut queues[h.queue].0, h.msg);
    }
}
