//! HTTPS on rustls: the accept loop, its bounds on connections and handshakes, mutual TLS
//! (the certificates and TLS configs are `crate::tls`'s).
//!
//! Client certificates are optional at the TLS layer (a new host has none yet) and, when
//! given, must chain to the transport CA; the node-protocol handlers that need one check it.

use crate::app::App;
use crate::http::ConnInfo;
use crate::limit::PerSource;
use crate::tls::{tls_config, ServingCert};
use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

pub use crate::tls::{director_tls_config, tls_provider, tune};

/// Concurrent TLS handshakes allowed; more wait, so a connection flood cannot grow memory.
const MAX_HANDSHAKES: usize = 256;
/// Handshakes one source address (an IPv6 /64 counts as one) may have in flight; its next
/// connections are closed at once, so one slow client (slowloris) cannot hold the shared
/// handshake slots from everyone else.
const MAX_HANDSHAKES_PER_SOURCE: usize = 16;
/// Once a connection idle past its limit is told to close (HTTP/2: GOAWAY), how long its
/// streams get to finish before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// HTTP/2 streams one connection may have open at once.
const H2_MAX_STREAMS: u32 = 32;
/// Bytes one HTTP/2 stream may have queued for a client that does not read: with
/// [`H2_MAX_STREAMS`], what a connection can hold (2 MiB).
const H2_MAX_SEND_BUF: usize = 64 * 1024;
/// File descriptors kept aside from connections (the store, logs, the installer file).
const FD_RESERVE: u64 = 128;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections the kernel holds for the accept loop. The default of Rust's and tokio's `bind`
/// (128) is what a fleet booting at once overflows: the kernel then drops their SYNs and each of
/// those hosts waits a second for its retransmission (measured: 137 of 6,000 enrollments of a
/// 1,000-installer storm). The kernel caps it at `net.core.somaxconn` (4096 by default), as Go
/// servers ask for.
const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with a backlog of [`LISTEN_BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The bounds on connections a listener keeps (from the server config).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub per_source: usize,
    pub idle: Duration,
}

impl Limits {
    /// The config's bounds, with `max_connections` lowered to what the file limit allows. The
    /// soft file limit is raised to the hard one first, as servers do.
    pub fn from_config(config: &crate::config::Config) -> Limits {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let files = match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            {
                Ok(()) => hard,
                Err(_) => soft,
            },
            Ok((soft, _)) => soft,
            Err(_) => 1024,
        };
        let fit = usize::try_from(files.saturating_sub(FD_RESERVE).max(16)).unwrap_or(usize::MAX);
        let max_connections = config.max_connections.min(fit);
        if max_connections < config.max_connections {
            tracing::warn!(
                files,
                max_connections,
                "the file limit allows fewer connections than max_connections; raise LimitNOFILE"
            );
        }
        // Under a lowered total, one address may hold a quarter of it, so a quiet crowd from
        // one place cannot take every connection the file limit leaves.
        let per_source_cap = if max_connections < config.max_connections {
            (max_connections / 4).max(1)
        } else {
            max_connections
        };
        Limits {
            max_connections,
            per_source: config.max_connections_per_source.min(per_source_cap),
            idle: Duration::from_secs(config.idle_timeout_seconds),
        }
    }
}

/// Serves the coordinator until `shutdown` resolves.
pub async fn serve(
    app: Arc<App>,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let cert = ServingCert::new(&app)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&app, cert.clone())?));
    app.publish_names()
        .await
        .context("publishing this coordinator's names in the store")?;
    app.lowercase_old_host_names()
        .await
        .context("filing host names in lower case")?;
    app.refresh_addresses(true)
        .await
        .context("reading the registered hosts' addresses")?;
    let router = crate::http::router(app.clone());
    let sweeper = {
        let app = app.clone();
        let every = Duration::from_secs((app.config.reservation_seconds / 2).clamp(1, 5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = app.sweep().await {
                    tracing::warn!(error = %format!("{e:#}"), "sweep failed");
                }
                if let Err(e) = app.names.reread().await {
                    tracing::warn!(error = %format!("{e:#}"), "reading this coordinator's names again failed");
                }
                if let Err(e) = cert.renew_if_due(&app, app.now()) {
                    tracing::warn!(error = %format!("{e:#}"), "issuing the serving certificate again failed");
                }
            }
        })
    };
    let limits = Limits::from_config(&app.config);
    let served = run(router, acceptor, listen, limits, shutdown).await;
    sweeper.abort();
    served
}

/// Serves a director until `shutdown` resolves.
pub async fn serve_director(
    director: Arc<crate::director::Director>,
    tls: rustls::ServerConfig,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let limits = Limits::from_config(&director.config);
    run(
        crate::director::router(director),
        acceptor,
        listen,
        limits,
        shutdown,
    )
    .await
}

/// The accept loop: bounded open connections (in all and per source), bounded concurrent
/// handshakes, each with a deadline, then HTTP/1.1 or HTTP/2 with a header-read timeout,
/// bounded HTTP/2 streams and send buffers, and an idle timeout. Each request's own deadline
/// is the router's ([`crate::http::within_time`]).
async fn run(
    router: axum::Router,
    acceptor: tokio_rustls::TlsAcceptor,
    listen: SocketAddr,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = self::listen(listen).with_context(|| format!("listening on {listen}"))?;
    let local = listener.local_addr()?;
    if crate::logging::text() {
        eprintln!("musterd listening on https://{local}");
    }
    tracing::info!(%local, "listening");
    // Under systemd (`Type=notify`), `systemctl start musterd` returns now: the socket is
    // bound and the next connection is accepted. Without `NOTIFY_SOCKET`, nothing is sent.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not tell systemd that musterd is ready");
    }

    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let per_source = Arc::new(PerSource::new(MAX_HANDSHAKES_PER_SOURCE));
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let connections_per_source = Arc::new(PerSource::new(limits.per_source));
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(open) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "max_connections open; closed");
            continue;
        };
        let Some(open_here) = connections_per_source.take(remote.ip()) else {
            tracing::debug!(%remote, "max_connections_per_source open from this address; closed");
            continue;
        };
        let Some(slot) = per_source.take(remote.ip()) else {
            tracing::debug!(%remote, "too many handshakes in flight from this address; closed");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let handshakes = handshakes.clone();
        tokio::spawn(async move {
            // Held while the connection is open.
            let _open = (open, open_here);
            let Ok(permit) = handshakes.acquire_owned().await else {
                return;
            };
            // The handshake's and the connection's state are boxed, made when each starts: a
            // task waiting for its turn to handshake then holds a few hundred bytes, not the
            // kilobytes of TLS and HTTP state, so 10,000 connections queued cost little.
            let handshake = Box::pin(acceptor.accept(tcp));
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            drop(permit);
            drop(slot);
            let peer_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(c.to_vec()));
            let info = ConnInfo {
                remote,
                peer_cert,
                joined: Arc::default(),
            };
            let svc = router.map_request(
                move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    req
                },
            );
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(H2_MAX_STREAMS)
                .max_send_buf_size(H2_MAX_SEND_BUF);
            let (io, moved) = Watched::new(tls);
            let mut conn = Box::pin(builder.serve_connection(TokioIo::new(io), svc));
            // The first tick one period on, not at once: a timer due now is earlier than
            // any the runtime is waiting for, so arming it woke the runtime's driver (a write
            // to its eventfd, 0.65 per enrollment in a 100-installer storm) only to find a
            // connection that had just started and could not be idle.
            let period = limits.idle.min(CLOSE_GRACE) / 2;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            let mut closing: Option<tokio::time::Instant> = None;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%remote, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = tick.tick() => match closing {
                        None if moved.idle_for() >= limits.idle => {
                            tracing::debug!(%remote, "connection idle; closing");
                            conn.as_mut().graceful_shutdown();
                            closing = Some(tokio::time::Instant::now());
                        }
                        Some(at) if at.elapsed() >= CLOSE_GRACE => {
                            tracing::debug!(%remote, "connection did not close in time; dropped");
                            break;
                        }
                        _ => {}
                    },
                }
            }
        });
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    Ok(())
}

/// A connection's stream, noting when it last moved a byte either way.
struct Watched<T> {
    inner: T,
    last: Arc<LastMoved>,
}

/// When a [`Watched`] stream last moved a byte: milliseconds since `start`.
struct LastMoved {
    start: std::time::Instant,
    at_ms: std::sync::atomic::AtomicU64,
}

impl LastMoved {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.at_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let at = Duration::from_millis(self.at_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.start.elapsed().saturating_sub(at)
    }
}

impl<T> Watched<T> {
    fn new(inner: T) -> (Watched<T>, Arc<LastMoved>) {
        let last = Arc::new(LastMoved {
            start: std::time::Instant::now(),
            at_ms: std::sync::atomic::AtomicU64::new(0),
        });
        (
            Watched {
                inner,
                last: last.clone(),
            },
            last,
        )
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.touch();
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.last.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.last.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::Slot;

    /// A crowd connecting at once, none of it accepted yet, is held by the kernel: with the
    /// default backlog (128) the 130th connection would wait for a SYN retransmission. (As deep
    /// as `net.core.somaxconn` allows: 4096 on current kernels, 128 before Linux 5.4.)
    #[test]
    fn the_listener_holds_a_fleet_connecting_at_once() -> anyhow::Result<()> {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")?
            .trim()
            .parse()?;
        let crowd = somaxconn.min(1000);
        if crowd <= 200 {
            println!("net.core.somaxconn is {somaxconn}: no backlog past the default to test");
            return Ok(());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let at: SocketAddr = "127.0.0.1:0".parse()?;
        let listener = rt.block_on(async { listen(at) })?;
        let addr = listener.local_addr()?;
        let mut held = Vec::new();
        for i in 0..crowd {
            let c = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300))
                .with_context(|| format!("connection {i} of {crowd}, none accepted"))?;
            held.push(c);
        }
        drop(listener);
        Ok(())
    }

    #[test]
    fn a_source_gets_a_bounded_number_of_handshake_slots() {
        let p = Arc::new(PerSource::new(MAX_HANDSHAKES_PER_SOURCE));
        let a: std::net::IpAddr = [10, 0, 0, 1].into();
        let held: Vec<Slot> = (0..MAX_HANDSHAKES_PER_SOURCE)
            .filter_map(|_| p.take(a))
            .collect();
        assert_eq!(held.len(), MAX_HANDSHAKES_PER_SOURCE);
        assert!(p.take(a).is_none());
        assert!(p.take([10, 0, 0, 2].into()).is_some());
        // Every address of one IPv6 /64 draws on the same slots.
        let net = |last: u16| std::net::IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        let v6: Vec<Slot> = (0..MAX_HANDSHAKES_PER_SOURCE as u16)
            .filter_map(|i| p.take(net(i + 1)))
            .collect();
        assert_eq!(v6.len(), MAX_HANDSHAKES_PER_SOURCE);
        assert!(p.take(net(999)).is_none());
        drop(v6);
        drop(held);
        assert!(p.take(a).is_some());
        assert!(p.map.lock().map(|m| m.len() <= 1).unwrap_or(false));
    }
}
