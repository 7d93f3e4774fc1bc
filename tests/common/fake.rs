//! A scripted TCP backend for raw-protocol tests (raw mode has no real server to stand in
//! for): it echoes what it reads, records every byte per connection, and can be killed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Default)]
pub struct Conn {
    pub accepted: Option<Instant>,
    pub received: Vec<u8>,
}

pub struct EchoBackend {
    pub addr: SocketAddr,
    pub conns: Arc<Mutex<Vec<Conn>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl EchoBackend {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (c, t) = (conns.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let idx = {
                    let mut conns = c.lock().unwrap();
                    conns.push(Conn {
                        accepted: Some(Instant::now()),
                        received: Vec::new(),
                    });
                    conns.len() - 1
                };
                let c = c.clone();
                t.lock().unwrap().push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    loop {
                        let n = match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        c.lock().unwrap()[idx].received.extend_from_slice(&buf[..n]);
                        if sock.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }));
            }
        });
        Self {
            addr,
            conns,
            tasks,
            accept,
        }
    }

    /// Connections that sent at least one byte (health checks send none).
    pub fn data_conns(&self) -> Vec<(Instant, Vec<u8>)> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .filter(|c| !c.received.is_empty())
            .map(|c| (c.accepted.unwrap(), c.received.clone()))
            .collect()
    }

    /// Everything received over all connections that sent data, in accept order.
    pub fn received(&self) -> Vec<u8> {
        self.data_conns().into_iter().flat_map(|(_, r)| r).collect()
    }

    /// Dies like a killed process: the listener and every connection close at once.
    pub fn kill(&self) {
        self.accept.abort();
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.kill();
    }
}
