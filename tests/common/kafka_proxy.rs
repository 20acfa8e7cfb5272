//! A TCP proxy in front of a Kafka broker that reads the protocol's framing, so a test can see
//! group requests as they travel: which client sent a JoinGroup, with which member id, and
//! whether the broker has answered it yet. The broker must advertise the proxy's address
//! (`KAFKA_ADVERTISED` in `.ci/kafka.sh`), so every connection of a client goes through it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The JoinGroup API key.
const JOIN_GROUP: i16 = 11;

/// A JoinGroup request seen on its way to the broker.
#[derive(Debug, Clone)]
pub struct Join {
    /// Order of arrival among all JoinGroup requests.
    pub seq: usize,
    pub client_id: String,
    pub group_id: String,
    /// Empty on a first join (the broker then hands out an id: MEMBER_ID_REQUIRED).
    pub member_id: String,
    /// A static member's `group.instance.id` (JoinGroup v5), which joins at once without
    /// asking for a member id first.
    pub instance_id: Option<String>,
    connection: u64,
    correlation_id: i32,
    /// Whether the broker's answer has passed back to the client.
    pub answered: bool,
}

#[derive(Default)]
struct Seen {
    joins: Vec<Join>,
}

/// A running proxy; it lives as long as the test process.
pub struct KafkaProxy {
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

impl KafkaProxy {
    /// Listens on `listen` and forwards every connection to `upstream`.
    pub fn start(listen: &str, upstream: &str) -> Self {
        let listener = TcpListener::bind(listen).expect("bind the Kafka proxy");
        let seen: Arc<(Mutex<Seen>, Condvar)> = Arc::default();
        let upstream = upstream.to_string();
        let shared = seen.clone();
        let connections = Arc::new(AtomicU64::new(0));
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(broker) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let id = connections.fetch_add(1, Ordering::SeqCst);
                let (c2, b2) = (client.try_clone().unwrap(), broker.try_clone().unwrap());
                let requests = shared.clone();
                std::thread::spawn(move || pump(client, broker, id, requests, Direction::Request));
                let answers = shared.clone();
                std::thread::spawn(move || pump(b2, c2, id, answers, Direction::Answer));
            }
        });
        Self { seen }
    }

    /// Waits (bounded) until `pick` finds a JoinGroup among those seen so far, and returns it.
    pub fn wait_join(&self, what: &str, pick: impl Fn(&[Join]) -> Option<Join>) -> Join {
        let (lock, changed) = &*self.seen;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = lock.lock().unwrap();
        loop {
            if let Some(join) = pick(&seen.joins) {
                return join;
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("timed out waiting for {what}"));
            seen = changed.wait_timeout(seen, left).unwrap().0;
        }
    }

    /// Every JoinGroup seen so far, in order, with whether each was answered.
    pub fn joins(&self) -> Vec<Join> {
        self.seen.0.lock().unwrap().joins.clone()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Request,
    Answer,
}

/// Copies frames from `from` to `to`, noting JoinGroup requests and their answers.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    connection: u64,
    seen: Arc<(Mutex<Seen>, Condvar)>,
    direction: Direction,
) {
    loop {
        let mut size = [0u8; 4];
        if from.read_exact(&mut size).is_err() {
            break;
        }
        let mut frame = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
        if from.read_exact(&mut frame).is_err() {
            break;
        }
        // Noted before forwarding: a request is seen before the broker can answer it, and an
        // answer is marked before the client can act on it.
        note(&frame, connection, &seen, direction);
        if to.write_all(&size).is_err() || to.write_all(&frame).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn note(frame: &[u8], connection: u64, seen: &(Mutex<Seen>, Condvar), direction: Direction) {
    let (lock, changed) = seen;
    let mut seen = lock.lock().unwrap();
    match direction {
        Direction::Request => {
            if let Some(join) = parse_join(frame, connection, seen.joins.len()) {
                seen.joins.push(join);
            }
        }
        Direction::Answer => {
            let Some(correlation_id) = frame
                .get(..4)
                .map(|b| i32::from_be_bytes(b.try_into().unwrap()))
            else {
                return;
            };
            for join in seen.joins.iter_mut() {
                if join.connection == connection && join.correlation_id == correlation_id {
                    join.answered = true;
                }
            }
        }
    }
    changed.notify_all();
}

/// A JoinGroup request (versions 1-5, the ones librdkafka sends) read from a frame.
fn parse_join(frame: &[u8], connection: u64, seq: usize) -> Option<Join> {
    let mut r = Reader(frame);
    let api_key = r.i16()?;
    let version = r.i16()?;
    if api_key != JOIN_GROUP {
        return None;
    }
    assert!(
        (1..=5).contains(&version),
        "the proxy reads JoinGroup v1-v5, the client sent v{version}"
    );
    let correlation_id = r.i32()?;
    let client_id = r.string()?;
    let group_id = r.string()?;
    let _session_timeout = r.i32()?;
    let _rebalance_timeout = r.i32()?;
    let member_id = r.string()?;
    let instance_id = if version >= 5 {
        r.nullable_string()?
    } else {
        None
    };
    Some(Join {
        seq,
        client_id,
        group_id,
        member_id,
        instance_id,
        connection,
        correlation_id,
        answered: false,
    })
}

/// Big-endian reads of the protocol's fixed-width fields and (nullable) int16-sized strings.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn nullable_string(&mut self) -> Option<Option<String>> {
        let len = self.i16()?;
        if len < 0 {
            return Some(None);
        }
        Some(Some(
            String::from_utf8_lossy(self.take(len as usize)?).into_owned(),
        ))
    }
    fn string(&mut self) -> Option<String> {
        let len = self.i16()?;
        if len < 0 {
            return Some(String::new());
        }
        Some(String::from_utf8_lossy(self.take(len as usize)?).into_owned())
    }
}
