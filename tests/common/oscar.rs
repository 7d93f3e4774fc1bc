//! A scripted OSCAR server and a scripted AIM client, both built from the real traffic in
//! `tests/vectors/oscar-signon-im.txt` (a libpurple client signing on to a real OSCAR server
//! and sending an IM; `scripts/oscar-vectors.py` extracts it from the shared capture).
//!
//! Scripted because no OSCAR server (nor AIM client) installs from the registries this project
//! can reach. The server answers every request with the real server's reply to the same
//! request (request id swapped in), checks the login hash against the one the real server
//! accepted, issues cookies of its own, and routes IMs through a [`Hub`] shared by the servers
//! of one test, the way linked servers of one network deliver to wherever a user is signed on.
//! The client replays the real client's side and checks what a real client checks: FLAP start
//! bytes and sequence numbers, per connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const VECTORS: &str = include_str!("../vectors/oscar-signon-im.txt");

/// FLAP frames of one captured connection: (sent by the client?, channel, payload).
pub fn captured(conn: &str) -> Vec<(bool, u8, Vec<u8>)> {
    VECTORS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split(' ');
            let (n, d, h) = (it.next()?, it.next()?, it.next()?);
            let f = unhex(h);
            (n == conn).then(|| (d == "C", f[1], f[6..].to_vec()))
        })
        .collect()
}

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

pub fn flap(channel: u8, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x2a, channel];
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn snac(family: u16, subtype: u16, rid: u32, body: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&family.to_be_bytes());
    s.extend_from_slice(&subtype.to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(&rid.to_be_bytes());
    s.extend_from_slice(body);
    s
}

pub fn tlv(tag: u16, value: &[u8]) -> Vec<u8> {
    let mut t = tag.to_be_bytes().to_vec();
    t.extend_from_slice(&(value.len() as u16).to_be_bytes());
    t.extend_from_slice(value);
    t
}

/// (family, subtype, request id) of a SNAC payload.
pub fn snac_id(p: &[u8]) -> (u16, u16, u32) {
    (
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
        u32::from_be_bytes([p[6], p[7], p[8], p[9]]),
    )
}

pub fn tlvs(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let t = u16::from_be_bytes([b[0], b[1]]);
        let n = u16::from_be_bytes([b[2], b[3]]) as usize;
        out.push((t, b[4..4 + n].to_vec()));
        b = &b[4 + n..];
    }
    out
}

pub fn find(list: &[(u16, Vec<u8>)], tag: u16) -> Option<Vec<u8>> {
    list.iter().find(|(t, _)| *t == tag).map(|(_, v)| v.clone())
}

/// Reads one FLAP frame: (channel, seq, payload). Panics on a bad start byte: no real client
/// or server would carry on either.
async fn read_frame(rd: &mut (impl AsyncReadExt + Unpin)) -> Option<(u8, u16, Vec<u8>)> {
    let mut h = [0u8; 6];
    rd.read_exact(&mut h).await.ok()?;
    assert_eq!(h[0], 0x2a, "a FLAP frame starts with 0x2a");
    let mut p = vec![0u8; u16::from_be_bytes([h[4], h[5]]) as usize];
    rd.read_exact(&mut p).await.ok()?;
    Some((h[1], u16::from_be_bytes([h[2], h[3]]), p))
}

type Outbox = mpsc::UnboundedSender<Vec<u8>>;
/// Received frames: (channel, payload).
type FrameLog = Arc<Mutex<Vec<(u8, Vec<u8>)>>>;
/// Cookie → (user, service family or BOS).
type Cookies = Arc<Mutex<HashMap<Vec<u8>, (String, Option<u16>)>>>;

/// An IM a server took from a client: (from, to, text found in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Im {
    pub server: String,
    pub from: String,
    pub to: String,
    pub message: Vec<u8>,
}

/// The servers of one test, linked: IMs go to the user's latest BOS connection anywhere.
#[derive(Default)]
pub struct Hub {
    online: Mutex<HashMap<String, (u64, Outbox)>>,
    pub ims: Mutex<Vec<Im>>,
}

/// One BOS connection as the server sees it.
#[derive(Default, Debug, Clone)]
pub struct BosConn {
    pub user: String,
    /// Every SNAC payload the client sent.
    pub snacs: Vec<Vec<u8>>,
    pub closed: bool,
}

/// A scripted OSCAR server: authorization, BOS, alert and chat-nav listeners.
pub struct Server {
    pub name: String,
    pub auth: SocketAddr,
    pub bos: SocketAddr,
    pub alert: SocketAddr,
    pub chatnav: SocketAddr,
    /// Refuse every login (a backend with another user database).
    pub refuse_logins: Arc<std::sync::atomic::AtomicBool>,
    pub bos_conns: Arc<Mutex<Vec<BosConn>>>,
    /// Service connections signed on: (family, user).
    pub service_conns: Arc<Mutex<Vec<(u16, String)>>>,
    /// Senders to each live BOS connection, to push frames (PAUSE_REQ…) at a user.
    pushers: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Vec<u8>>>>>,
    cookies: Cookies,
    pub logins: Arc<AtomicU64>,
    /// Users whose login this server accepted, in order.
    pub accepted_logins: Arc<Mutex<Vec<String>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Port {
    Auth,
    Bos,
    Service(u16),
}

struct Ctx {
    server: Arc<Server>,
    hub: Arc<Hub>,
}

impl Server {
    pub async fn start(name: &str, hub: Arc<Hub>) -> Arc<Server> {
        let bind = || TcpListener::bind("127.0.0.1:0");
        let (auth, bos, alert, chatnav) = (
            bind().await.unwrap(),
            bind().await.unwrap(),
            bind().await.unwrap(),
            bind().await.unwrap(),
        );
        let server = Arc::new(Server {
            name: name.to_string(),
            auth: auth.local_addr().unwrap(),
            bos: bos.local_addr().unwrap(),
            alert: alert.local_addr().unwrap(),
            chatnav: chatnav.local_addr().unwrap(),
            refuse_logins: Arc::default(),
            bos_conns: Arc::default(),
            service_conns: Arc::default(),
            pushers: Arc::default(),
            cookies: Arc::default(),
            logins: Arc::default(),
            accepted_logins: Arc::default(),
            tasks: Arc::default(),
        });
        for (listener, port) in [
            (auth, Port::Auth),
            (bos, Port::Bos),
            (alert, Port::Service(0x18)),
            (chatnav, Port::Service(0x0d)),
        ] {
            let ctx = Arc::new(Ctx {
                server: server.clone(),
                hub: hub.clone(),
            });
            let tasks = server.tasks.clone();
            let accept = tokio::spawn(async move {
                while let Ok((sock, _)) = listener.accept().await {
                    let t = tokio::spawn(serve(ctx.clone(), sock, port));
                    ctx.server.tasks.lock().unwrap().push(t);
                }
            });
            tasks.lock().unwrap().push(accept);
        }
        server
    }

    /// Dies like a killed process: every listener and connection closes at once.
    pub fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Sends a SNAC to a user's live BOS connection on this server.
    pub fn push(&self, user: &str, payload: Vec<u8>) {
        let pushers = self.pushers.lock().unwrap();
        pushers
            .get(user)
            .expect("user online here")
            .send(payload)
            .unwrap();
    }

    pub fn bos_of(&self, user: &str) -> Vec<BosConn> {
        let conns = self.bos_conns.lock().unwrap();
        conns.iter().filter(|c| c.user == user).cloned().collect()
    }

    /// A cookie this server accepts for `user` (BOS when `service` is `None`).
    pub fn cookie(&self, user: &str, service: Option<u16>) -> Vec<u8> {
        let n = self.logins.fetch_add(1, Ordering::Relaxed);
        let cookie = format!("{}:{user}:{n}", self.name).into_bytes();
        self.cookies
            .lock()
            .unwrap()
            .insert(cookie.clone(), (user.to_string(), service));
        cookie
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The captured reply (by request id) to each request of a captured connection.
fn replies(conn: &str) -> HashMap<(u16, u16), Vec<u8>> {
    let frames = captured(conn);
    let mut out = HashMap::new();
    for (_, _, req) in frames.iter().filter(|(c, ch, _)| *c && *ch == 2) {
        let (f, s, rid) = snac_id(req);
        if rid == 0 {
            continue;
        }
        if let Some((_, _, reply)) = frames
            .iter()
            .find(|(c, ch, p)| !*c && *ch == 2 && snac_id(p).2 == rid)
        {
            out.entry((f, s)).or_insert_with(|| reply.clone());
        }
    }
    out
}

/// The captured HOST_ONLINE (01,03) of a connection.
fn host_online(conn: &str) -> Vec<u8> {
    captured(conn)
        .into_iter()
        .find(|(c, ch, p)| !*c && *ch == 2 && snac_id(p).1 == 3)
        .unwrap()
        .2
}

fn with_rid(payload: &[u8], rid: u32) -> Vec<u8> {
    let mut p = payload.to_vec();
    p[6..10].copy_from_slice(&rid.to_be_bytes());
    p
}

async fn serve(ctx: Arc<Ctx>, sock: TcpStream, port: Port) {
    let _ = sock.set_nodelay(true);
    let (mut rd, wr) = sock.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    // One writer numbers every frame, starting at 100 like the captured server.
    let writer = tokio::spawn(async move {
        let mut wr: OwnedWriteHalf = wr;
        let mut seq = 100u16;
        while let Some(f) = rx.recv().await {
            let (ch, payload) = (f[0], &f[1..]);
            if wr.write_all(&flap(ch, seq, payload)).await.is_err() {
                return;
            }
            seq = (seq + 1) % 0x8000;
            if ch == 4 {
                let _ = wr.shutdown().await;
                return;
            }
        }
    });
    ctx.server.tasks.lock().unwrap().push(writer);
    let send = |ch: u8, payload: &[u8]| {
        let mut f = vec![ch];
        f.extend_from_slice(payload);
        let _ = tx.send(f);
    };
    send(1, &[0, 0, 0, 1]);
    let Some((1, _, hello)) = read_frame(&mut rd).await else {
        return;
    };
    let list = tlvs(hello.get(4..).unwrap_or_default());
    match port {
        Port::Auth => auth(&ctx, &mut rd, &send).await,
        _ => {
            let cookie = find(&list, 6).unwrap_or_default();
            let known = ctx.server.cookies.lock().unwrap().get(&cookie).cloned();
            let Some((user, service)) = known else {
                send(4, &tlv(8, &[0, 4]));
                return;
            };
            match (port, service) {
                (Port::Bos, None) => bos(&ctx, &mut rd, &send, &tx, &user).await,
                (Port::Service(f), Some(s)) if f == s => {
                    service_conn(&ctx, &mut rd, &send, &user, f).await
                }
                _ => send(4, &tlv(8, &[0, 4])),
            }
        }
    }
    drop(tx);
}

async fn auth(ctx: &Ctx, rd: &mut (impl AsyncReadExt + Unpin), send: &impl Fn(u8, &[u8])) {
    let mut user = String::new();
    while let Some((ch, _, p)) = read_frame(rd).await {
        if ch != 2 {
            continue;
        }
        let (f, s, rid) = snac_id(&p);
        let list = tlvs(&p[10..]);
        match (f, s) {
            (0x17, 0x06) => {
                user = String::from_utf8(find(&list, 1).unwrap()).unwrap();
                // The captured challenge (the user's stored key), answered with rid 0 as the
                // real server did.
                let reply = captured(&format!("{user}-auth"))
                    .into_iter()
                    .find(|(c, ch, p)| !*c && *ch == 2 && snac_id(p).1 == 7)
                    .unwrap()
                    .2;
                send(2, &reply);
            }
            (0x17, 0x02) => {
                // The hash must be the one the real server accepted for this user.
                let want = captured(&format!("{user}-auth"))
                    .into_iter()
                    .find(|(c, ch, p)| *c && *ch == 2 && snac_id(p).1 == 2)
                    .map(|(_, _, p)| find(&tlvs(&p[10..]), 0x25))
                    .unwrap();
                let ok =
                    find(&list, 0x25) == want && !ctx.server.refuse_logins.load(Ordering::Relaxed);
                if ok {
                    ctx.server
                        .accepted_logins
                        .lock()
                        .unwrap()
                        .push(user.clone());
                }
                let mut body = tlv(1, user.as_bytes());
                if ok {
                    let bos = ctx.server.bos.to_string();
                    body.extend(tlv(5, bos.as_bytes()));
                    body.extend(tlv(6, &ctx.server.cookie(&user, None)));
                } else {
                    body.extend(tlv(8, &[0, 5]));
                }
                send(2, &snac(0x17, 0x03, rid, &body));
                send(4, &[]);
                return;
            }
            _ => {}
        }
    }
}

async fn bos(
    ctx: &Ctx,
    rd: &mut (impl AsyncReadExt + Unpin),
    send: &impl Fn(u8, &[u8]),
    tx: &mpsc::UnboundedSender<Vec<u8>>,
    user: &str,
) {
    let conn = format!("{user}-bos");
    let table = replies(&conn);
    send(2, &host_online(&conn));
    let idx = {
        let mut conns = ctx.server.bos_conns.lock().unwrap();
        conns.push(BosConn {
            user: user.to_string(),
            ..Default::default()
        });
        conns.len() - 1
    };
    // Pushes (from the test, or IMs from the hub) go out as channel-2 frames.
    let (push_tx, mut push_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    // Unique across the hub's servers, so a closing connection forgets only itself.
    static CONN_IDS: AtomicU64 = AtomicU64::new(1);
    let id = CONN_IDS.fetch_add(1, Ordering::Relaxed);
    ctx.server
        .pushers
        .lock()
        .unwrap()
        .insert(user.to_string(), push_tx.clone());
    ctx.hub
        .online
        .lock()
        .unwrap()
        .insert(user.to_string(), (id, push_tx));
    let out = tx.clone();
    let pusher = tokio::spawn(async move {
        while let Some(p) = push_rx.recv().await {
            let mut f = vec![2u8];
            f.extend_from_slice(&p);
            if out.send(f).is_err() {
                return;
            }
        }
    });
    let stop_pusher = pusher.abort_handle();
    ctx.server.tasks.lock().unwrap().push(pusher);
    while let Some((ch, _, p)) = read_frame(rd).await {
        if ch == 4 {
            break;
        }
        if ch != 2 {
            continue;
        }
        ctx.server.bos_conns.lock().unwrap()[idx]
            .snacs
            .push(p.clone());
        let (f, s, rid) = snac_id(&p);
        match (f, s) {
            (0x01, 0x04) => {
                let family = u16::from_be_bytes([p[10], p[11]]);
                let addr = match family {
                    0x18 => ctx.server.alert,
                    _ => ctx.server.chatnav,
                };
                let mut body = tlv(5, addr.to_string().as_bytes());
                body.extend(tlv(6, &ctx.server.cookie(user, Some(family))));
                body.extend(tlv(0x0d, &family.to_be_bytes()));
                send(2, &snac(0x01, 0x05, rid, &body));
            }
            (0x04, 0x06) => im(ctx, user, &p),
            _ => {
                if let Some(reply) = table.get(&(f, s)) {
                    send(2, &with_rid(reply, rid));
                }
            }
        }
    }
    stop_pusher.abort();
    ctx.server.bos_conns.lock().unwrap()[idx].closed = true;
    let mut online = ctx.hub.online.lock().unwrap();
    if online.get(user).is_some_and(|(i, _)| *i == id) {
        online.remove(user);
    }
}

/// ICBM 04,06: cookie (8), channel (2), recipient (u8 length + name), then TLVs.
fn im(ctx: &Ctx, from: &str, p: &[u8]) {
    let data = &p[10..];
    let n = data[10] as usize;
    let to = String::from_utf8(data[11..11 + n].to_vec()).unwrap();
    let rest = &data[11 + n..];
    ctx.hub.ims.lock().unwrap().push(Im {
        server: ctx.server.name.clone(),
        from: from.to_string(),
        to: to.clone(),
        message: rest.to_vec(),
    });
    // 04,07: cookie, channel, the sender's user info (name, warning, no TLVs), the TLVs.
    let mut body = data[..10].to_vec();
    body.push(from.len() as u8);
    body.extend_from_slice(from.as_bytes());
    body.extend_from_slice(&[0, 0, 0, 0]);
    body.extend_from_slice(rest);
    if let Some((_, tx)) = ctx.hub.online.lock().unwrap().get(&to) {
        let _ = tx.send(snac(0x04, 0x07, 0, &body));
    }
}

async fn service_conn(
    ctx: &Ctx,
    rd: &mut (impl AsyncReadExt + Unpin),
    send: &impl Fn(u8, &[u8]),
    user: &str,
    family: u16,
) {
    let conn = format!(
        "{user}-{}",
        if family == 0x18 { "alert" } else { "chatnav" }
    );
    let mut table = replies(&conn);
    // OSERVICE is served on every connection; the capture only shows 01,0E on BOS.
    let self_info = replies(&format!("{user}-bos"))[&(0x01, 0x0e)].clone();
    table.insert((0x01, 0x0e), self_info);
    send(2, &host_online(&conn));
    ctx.server
        .service_conns
        .lock()
        .unwrap()
        .push((family, user.to_string()));
    while let Some((ch, _, p)) = read_frame(rd).await {
        if ch == 4 {
            break;
        }
        if ch == 2 {
            let (f, s, rid) = snac_id(&p);
            if let Some(reply) = table.get(&(f, s)) {
                send(2, &with_rid(reply, rid));
            }
        }
    }
}

/// One connection of the scripted client: it numbers what it sends and checks what it gets.
pub struct ClientConn {
    wr: OwnedWriteHalf,
    seq: u16,
    rx: mpsc::UnboundedReceiver<(u8, Vec<u8>)>,
    /// Every frame received: (channel, payload).
    pub log: FrameLog,
    /// A sequence-number break or a bad frame, described.
    pub broken: Arc<Mutex<Option<String>>>,
    pub closed: Arc<std::sync::atomic::AtomicBool>,
    /// Every byte received, as received (for an independent decoder).
    pub raw: Arc<Mutex<Vec<u8>>>,
}

impl ClientConn {
    pub async fn connect(addr: &str) -> ClientConn {
        let sock = TcpStream::connect(addr).await.unwrap();
        let _ = sock.set_nodelay(true);
        let (mut rd, wr) = sock.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let log: FrameLog = Arc::default();
        let broken: Arc<Mutex<Option<String>>> = Arc::default();
        let closed: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let raw: Arc<Mutex<Vec<u8>>> = Arc::default();
        let (l, b, c, r) = (log.clone(), broken.clone(), closed.clone(), raw.clone());
        tokio::spawn(async move {
            let mut last: Option<u16> = None;
            while let Some((ch, seq, p)) = read_frame(&mut rd).await {
                if let Some(prev) = last {
                    if seq != (prev + 1) % 0x8000 {
                        *b.lock().unwrap() = Some(format!("seq {seq} after {prev}"));
                    }
                }
                last = Some(seq);
                r.lock().unwrap().extend(flap(ch, seq, &p));
                l.lock().unwrap().push((ch, p.clone()));
                let _ = tx.send((ch, p));
            }
            c.store(true, Ordering::Relaxed);
        });
        ClientConn {
            wr,
            seq: 1,
            rx,
            log,
            broken,
            closed,
            raw,
        }
    }

    pub async fn send(&mut self, channel: u8, payload: &[u8]) {
        let f = flap(channel, self.seq, payload);
        self.seq = (self.seq + 1) % 0x8000;
        self.wr.write_all(&f).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.wr.write_all(bytes).await;
    }

    /// The next frame that matches, within 5 s.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(u8, &[u8]) -> bool) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((ch, p))) if pred(ch, &p) => return p,
                Ok(Some(_)) => {}
                Ok(None) => panic!("connection closed while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    pub async fn expect_snac(&mut self, family: u16, subtype: u16) -> Vec<u8> {
        self.expect(&format!("SNAC {family:02x},{subtype:02x}"), |ch, p| {
            ch == 2 && p.len() >= 10 && snac_id(p).0 == family && snac_id(p).1 == subtype
        })
        .await
    }

    /// How many SNACs (family, subtype) arrived so far.
    pub fn count(&self, family: u16, subtype: u16) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(ch, p)| *ch == 2 && snac_id(p).0 == family && snac_id(p).1 == subtype)
            .count()
    }
}

/// A signed-on scripted client: the BOS connection and its service connections.
pub struct Client {
    pub user: String,
    pub bos: ClientConn,
    pub services: Vec<ClientConn>,
    /// Every address the servers (through handover) told the client to connect to.
    pub told: Vec<String>,
    im_seq: u64,
}

impl Client {
    /// Signs on through `addr` as the captured client did: login, BOS, then alert and
    /// chat-nav, replaying the captured client frames.
    pub async fn sign_on(addr: SocketAddr, user: &str) -> Client {
        let mut told = Vec::new();
        let mut login = ClientConn::connect(&addr.to_string()).await;
        login.expect("the FLAP hello", |ch, _| ch == 1).await;
        let auth = captured(&format!("{user}-auth"));
        let mut reply = Vec::new();
        for (from_client, ch, p) in auth.iter().filter(|f| f.0) {
            let _ = from_client;
            login.send(*ch, p).await;
            if *ch == 2 && snac_id(p).1 == 6 {
                login.expect_snac(0x17, 0x07).await;
            }
            if *ch == 2 && snac_id(p).1 == 2 {
                reply = login.expect_snac(0x17, 0x03).await;
            }
        }
        let list = tlvs(&reply[10..]);
        let bos_addr = String::from_utf8(find(&list, 5).expect("a BOS address")).unwrap();
        let cookie = find(&list, 6).expect("a cookie");
        told.push(bos_addr.clone());
        let mut bos = ClientConn::connect(&bos_addr).await;
        bos.expect("the FLAP hello", |ch, _| ch == 1).await;
        bos.send(1, &[&[0, 0, 0, 1][..], &tlv(6, &cookie)].concat())
            .await;
        bos.expect_snac(0x01, 0x03).await;
        let mut redirects = Vec::new();
        for (_, ch, p) in captured(&format!("{user}-bos"))
            .iter()
            .filter(|f| f.0 && f.1 == 2)
        {
            let (f, s, _) = snac_id(p);
            if (f, s) == (0x04, 0x06) {
                continue; // the captured IM: tests send their own
            }
            bos.send(*ch, p).await;
            if (f, s) == (0x01, 0x04) {
                redirects.push(bos.expect_snac(0x01, 0x05).await);
            }
        }
        let mut services = Vec::new();
        for r in redirects {
            let list = tlvs(&r[10..]);
            let addr = String::from_utf8(find(&list, 5).unwrap()).unwrap();
            let family = u16::from_be_bytes(find(&list, 0x0d).unwrap()[..2].try_into().unwrap());
            told.push(addr.clone());
            let mut conn = ClientConn::connect(&addr).await;
            conn.expect("the FLAP hello", |ch, _| ch == 1).await;
            let sign_on = [&[0, 0, 0, 1][..], &tlv(6, &find(&list, 6).unwrap())].concat();
            conn.send(1, &sign_on).await;
            conn.expect_snac(0x01, 0x03).await;
            let name = if family == 0x18 { "alert" } else { "chatnav" };
            for (_, ch, p) in captured(&format!("{user}-{name}"))
                .iter()
                .filter(|f| f.0 && f.1 == 2)
            {
                conn.send(*ch, p).await;
            }
            // The service is signed on once its client-online has been answered in order:
            // a user-info query after it is answered after it.
            services.push(conn);
        }
        Client {
            user: user.to_string(),
            bos,
            services,
            told,
            im_seq: 0,
        }
    }

    /// Sends an IM (channel 1, plain text) and returns its text.
    pub async fn send_im(&mut self, to: &str, text: &str) {
        self.im_seq += 1;
        let mut data = self.im_seq.to_be_bytes().to_vec();
        data.extend_from_slice(&[0, 1]);
        data.push(to.len() as u8);
        data.extend_from_slice(to.as_bytes());
        // TLV 2: features fragment (05 01), then the message fragment (01 01) with charset 0.
        let mut msg = vec![0x05, 0x01, 0x00, 0x01, 0x01, 0x01, 0x01];
        msg.extend_from_slice(&((text.len() + 4) as u16).to_be_bytes());
        msg.extend_from_slice(&[0, 0, 0, 0]);
        msg.extend_from_slice(text.as_bytes());
        data.extend(tlv(2, &msg));
        self.bos
            .send(2, &snac(0x04, 0x06, 0x100 + self.im_seq as u32, &data))
            .await;
    }

    /// How many IMs received so far contain `text`.
    pub fn ims_with(&self, text: &str) -> usize {
        self.bos
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|(ch, p)| *ch == 2 && snac_id(p).0 == 4 && snac_id(p).1 == 7)
            .filter(|(_, p)| p.windows(text.len()).any(|w| w == text.as_bytes()))
            .count()
    }

    /// A round trip on BOS: a user-info query answered by the backend the session is on.
    pub async fn ping(&mut self) {
        let rid = 0x7000 + self.im_seq as u32;
        self.im_seq += 1;
        self.bos.send(2, &snac(0x01, 0x0e, rid, &[])).await;
        self.bos
            .expect("the self-info reply", |ch, p| {
                ch == 2 && p.len() >= 10 && snac_id(p) == (0x01, 0x0f, rid)
            })
            .await;
    }

    pub fn seq_broken(&self) -> Option<String> {
        std::iter::once(&self.bos)
            .chain(self.services.iter())
            .find_map(|c| c.broken.lock().unwrap().clone())
    }
}

pub fn hub() -> Arc<Hub> {
    Arc::default()
}

impl Hub {
    /// IMs the servers took whose bytes contain `text`.
    pub fn ims_with(&self, text: &str) -> Vec<Im> {
        self.ims
            .lock()
            .unwrap()
            .iter()
            .filter(|im| im.message.windows(text.len()).any(|w| w == text.as_bytes()))
            .cloned()
            .collect()
    }
}

/// Writes one direction of a TCP stream as a pcap file (raw IPv4 link type), cut into
/// segments, so tshark can decode it with `-d tcp.port==<port>,aim`.
pub fn write_pcap(path: &std::path::Path, server_port: u16, server_to_client: &[u8]) {
    let mut out = Vec::new();
    for v in [0xa1b2c3d4u32.to_le_bytes(), 0x0004_0002u32.to_le_bytes()] {
        out.extend_from_slice(&v); // magic; version 2.4
    }
    out.extend_from_slice(&[0; 8]); // timezone, accuracy
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&101u32.to_le_bytes()); // LINKTYPE_RAW
    let mut seq = 1u32;
    for (i, chunk) in server_to_client.chunks(1000).enumerate() {
        let mut pkt = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        let total = (20 + 20 + chunk.len()) as u16;
        pkt[2..4].copy_from_slice(&total.to_be_bytes());
        pkt.extend_from_slice(&server_port.to_be_bytes());
        pkt.extend_from_slice(&40000u16.to_be_bytes());
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(&1u32.to_be_bytes());
        pkt.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]); // PSH+ACK
        pkt.extend_from_slice(chunk);
        seq += chunk.len() as u32;
        out.extend_from_slice(&(i as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
        out.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
        out.extend_from_slice(&pkt);
    }
    std::fs::write(path, out).unwrap();
}
