//! A TCP proxy the test can cut: it stands between the controller and PostgreSQL (or any
//! other TCP service) on 127.0.0.1, so a test can take the database away mid-run and give it
//! back, the way a network outage or a failover does.
//!
//! `cut` drops every open connection at once; while cut, a new connection is either refused
//! (accepted and closed at once: the server is down) or blackholed (accepted and never
//! answered: the network hangs, as real outages often do). `restore` lets new connections
//! through again; a blackholed connection still waiting then goes through too, late, as a SYN
//! retransmitted after a partition heals would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How the proxy treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward to the upstream.
    Forward,
    /// Accept and close at once.
    Refuse,
    /// Accept and never answer (until restored).
    Blackhole,
}

/// What the proxy has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connections accepted from clients, whatever became of them.
    pub accepted: u64,
    /// Connections forwarded to the upstream.
    pub forwarded: u64,
    /// Connections closed at once while cut (`Mode::Refuse`).
    pub refused: u64,
    /// Connections held unanswered while cut (`Mode::Blackhole`).
    pub blackholed: u64,
    /// Open forwarded connections dropped by a cut.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    forwarded: AtomicU64,
    refused: AtomicU64,
    blackholed: AtomicU64,
    dropped: AtomicU64,
}

/// The running proxy; it stops when the test's runtime does.
pub struct Proxy {
    addr: SocketAddr,
    /// The mode and an epoch that every cut moves, so open connections see the cut.
    state: watch::Sender<(Mode, u64)>,
    counters: Arc<Counters>,
}

impl Proxy {
    /// Starts forwarding from an ephemeral 127.0.0.1 port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let (state, _) = watch::channel((Mode::Forward, 0u64));
        let counters = Arc::new(Counters::default());
        let (tx, c) = (state.clone(), counters.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                c.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(client, upstream, tx.subscribe(), c.clone()));
            }
        });
        Self {
            addr,
            state,
            counters,
        }
    }

    /// A proxy in front of the tests' PostgreSQL server (127.0.0.1:5432).
    pub async fn postgres() -> Self {
        Self::start("127.0.0.1:5432".parse().unwrap()).await
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and treats new ones as `mode` says (`Refuse` or
    /// `Blackhole`) until [`Proxy::restore`].
    pub fn cut(&self, mode: Mode) {
        assert_ne!(mode, Mode::Forward, "cut with Refuse or Blackhole");
        self.state.send_modify(|(m, epoch)| {
            *m = mode;
            *epoch += 1;
        });
    }

    /// Forwards new (and blackholed) connections again.
    pub fn restore(&self) {
        self.state.send_modify(|(m, _)| *m = Mode::Forward);
    }

    /// The counters so far.
    pub fn counts(&self) -> Counts {
        let c = &self.counters;
        Counts {
            accepted: c.accepted.load(Ordering::SeqCst),
            forwarded: c.forwarded.load(Ordering::SeqCst),
            refused: c.refused.load(Ordering::SeqCst),
            blackholed: c.blackholed.load(Ordering::SeqCst),
            dropped: c.dropped.load(Ordering::SeqCst),
        }
    }
}

/// One client connection: refused, held, or forwarded until the next cut.
async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    mut state: watch::Receiver<(Mode, u64)>,
    counters: Arc<Counters>,
) {
    let mode = state.borrow_and_update().0;
    match mode {
        Mode::Refuse => {
            counters.refused.fetch_add(1, Ordering::SeqCst);
            return; // dropping the socket closes it
        }
        Mode::Blackhole => {
            counters.blackholed.fetch_add(1, Ordering::SeqCst);
            // Held, unanswered, until the proxy forwards again (or the client gives up).
            if state.wait_for(|(m, _)| *m == Mode::Forward).await.is_err() {
                return;
            }
        }
        Mode::Forward => {}
    }
    let epoch = state.borrow_and_update().1;
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    counters.forwarded.fetch_add(1, Ordering::SeqCst);
    let (mut client, mut server) = (client, server);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = state.wait_for(|(_, e)| *e != epoch) => {
            counters.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
    // Both sockets close here: the client sees its connection reset mid-conversation.
}
