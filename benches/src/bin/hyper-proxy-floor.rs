//! The floor for the proxy benchmark: the least a reverse proxy built on hyper with the
//! `proxy` source's structure can do — one current-thread runtime per core, each client
//! connection served by hyper's HTTP/1.1 server with its own upstream connection from
//! hyper's HTTP/1.1 client — and nothing else: no header rewriting, no body taps, no event.
//! `benches/proxy/run.sh` runs it beside the `proxy` source and nginx, so the cost of the
//! source's own work and the cost of hyper itself can be told apart.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::Parser;
use hyper::body::Incoming;
use hyper::client::conn::http1 as client_http1;
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

/// The allocator the `pipeline` binary uses, so the floor differs from the proxy only in work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "A bare hyper reverse proxy, the floor for benches/proxy/run.sh")]
struct Args {
    /// Where clients connect.
    #[arg(long, default_value = "127.0.0.1:19190")]
    listen: SocketAddr,
    /// The upstream's host:port.
    #[arg(long, default_value = "127.0.0.1:18002")]
    upstream: SocketAddr,
    /// Serving threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = (0..workers)
        .map(|_| {
            let (listen, upstream) = (args.listen, args.upstream);
            std::thread::spawn(move || -> anyhow::Result<()> {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(serve(listen, upstream))
            })
        })
        .collect::<Vec<_>>();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(())
}

/// One worker: its own `SO_REUSEPORT` listener, the kernel spreading connections over them.
async fn serve(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseport(true)?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let listener = socket.listen(1024)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, upstream).await {
                eprintln!("connection ended: {error:#}");
            }
        });
    }
}

async fn serve_connection(client: TcpStream, upstream: SocketAddr) -> anyhow::Result<()> {
    let upstream_stream = TcpStream::connect(upstream).await?;
    let _ = upstream_stream.set_nodelay(true);
    let (sender, upstream_connection) =
        client_http1::handshake::<_, Incoming>(TokioIo::new(upstream_stream)).await?;
    tokio::spawn(async move {
        let _ = upstream_connection.await;
    });
    // HTTP/1.1 serves one call at a time per connection: the sender is taken and put back.
    let sender = Arc::new(Mutex::new(Some(sender)));
    let service = service_fn(move |request: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let taken = sender.lock().unwrap_or_else(|e| e.into_inner()).take();
            let Some(mut upstream_sender) = taken else {
                anyhow::bail!("the upstream connection is busy or gone");
            };
            upstream_sender.ready().await?;
            let response: Response<Incoming> = upstream_sender.send_request(request).await?;
            sender
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(upstream_sender);
            Ok(response)
        }
    });
    server_http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await?;
    Ok(())
}
