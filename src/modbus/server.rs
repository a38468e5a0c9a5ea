//! A generic register bank served over real Modbus (TCP, RTU over TCP, RTU on
//! a serial port), for the simulator and tests.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use super::{MAX_READ_WORDS, MAX_WRITE_WORDS};
use crate::registers::Table;

const MAPPED: u8 = 1;
const WRITABLE: u8 = 2;
const WORDS: usize = 0x1_0000;

/// One unit id's registers: holding and input tables of 65536 words each, with
/// the ranges that exist and the ones that accept writes.
#[derive(Debug, Clone)]
pub struct Bank {
    holding: Vec<u16>,
    input: Vec<u16>,
    holding_flags: Vec<u8>,
    input_flags: Vec<u8>,
    writes: Vec<(u16, Vec<u16>)>,
}

impl Default for Bank {
    fn default() -> Self {
        Bank::new()
    }
}

impl Bank {
    pub fn new() -> Bank {
        Bank {
            holding: vec![0; WORDS],
            input: vec![0; WORDS],
            holding_flags: vec![0; WORDS],
            input_flags: vec![0; WORDS],
            writes: Vec::new(),
        }
    }

    fn words(&self, table: Table) -> (&[u16], &[u8]) {
        match table {
            Table::Holding => (&self.holding, &self.holding_flags),
            Table::Input => (&self.input, &self.input_flags),
        }
    }

    fn words_mut(&mut self, table: Table) -> (&mut [u16], &mut [u8]) {
        match table {
            Table::Holding => (&mut self.holding, &mut self.holding_flags),
            Table::Input => (&mut self.input, &mut self.input_flags),
        }
    }

    /// Marks `len` registers from `start` as existing (and writable over Modbus
    /// if `writable`). Requests touching anything else get exception 0x02, as a
    /// real device answers for registers it does not have.
    pub fn map_range(&mut self, table: Table, start: u16, len: u16, writable: bool) {
        let (_, flags) = self.words_mut(table);
        let end = (usize::from(start) + usize::from(len)).min(WORDS);
        let flag = if writable { MAPPED | WRITABLE } else { MAPPED };
        for f in &mut flags[usize::from(start)..end] {
            *f = flag;
        }
    }

    /// Sets registers locally (not recorded as a write); stops at register 65535.
    pub fn set(&mut self, table: Table, addr: u16, words: &[u16]) {
        let (regs, _) = self.words_mut(table);
        let start = usize::from(addr);
        let n = words.len().min(WORDS - start);
        regs[start..start + n].copy_from_slice(&words[..n]);
    }

    /// Registers from `addr`, mapped or not; stops at register 65535.
    pub fn get(&self, table: Table, addr: u16, len: u16) -> Vec<u16> {
        let (regs, _) = self.words(table);
        let start = usize::from(addr);
        let end = (start + usize::from(len)).min(WORDS);
        regs[start..end].to_vec()
    }

    /// Writes received over Modbus since the last call, as (address, words).
    pub fn take_writes(&mut self) -> Vec<(u16, Vec<u16>)> {
        std::mem::take(&mut self.writes)
    }

    fn check(&self, table: Table, addr: u16, len: usize, need: u8) -> Result<(), ExceptionCode> {
        let (_, flags) = self.words(table);
        let start = usize::from(addr);
        let end = start + len;
        if end > WORDS || flags[start..end].iter().any(|f| f & need != need) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        Ok(())
    }

    fn read(&self, table: Table, addr: u16, n: u16) -> Result<Vec<u16>, ExceptionCode> {
        if n == 0 || n > MAX_READ_WORDS {
            return Err(ExceptionCode::IllegalDataValue);
        }
        self.check(table, addr, usize::from(n), MAPPED)?;
        Ok(self.get(table, addr, n))
    }

    fn write(&mut self, addr: u16, words: &[u16]) -> Result<(), ExceptionCode> {
        if words.is_empty() || words.len() > usize::from(MAX_WRITE_WORDS) {
            return Err(ExceptionCode::IllegalDataValue);
        }
        self.check(Table::Holding, addr, words.len(), MAPPED | WRITABLE)?;
        self.set(Table::Holding, addr, words);
        self.writes.push((addr, words.to_vec()));
        Ok(())
    }

    /// Answers one request; `Err` is the exception to send.
    fn handle(&mut self, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        match request {
            Request::ReadHoldingRegisters(a, n) => self
                .read(Table::Holding, *a, *n)
                .map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(a, n) => self
                .read(Table::Input, *a, *n)
                .map(Response::ReadInputRegisters),
            Request::WriteSingleRegister(a, w) => self
                .write(*a, &[*w])
                .map(|()| Response::WriteSingleRegister(*a, *w)),
            Request::WriteMultipleRegisters(a, ws) => {
                let n = ws.len() as u16;
                self.write(*a, ws)
                    .map(|()| Response::WriteMultipleRegisters(*a, n))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

pub type SharedBank = Arc<Mutex<Bank>>;

/// Faults to inject into a served endpoint, changeable while it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Answer every request this late (a delay beyond the client's timeout is a timeout).
    pub delay: Option<Duration>,
    /// Refuse new connections and close open ones at their next request.
    pub drop_connections: bool,
    /// Answer every request with this exception code.
    pub exception: Option<u8>,
    /// Unit ids that never answer (a dead device behind a live gateway).
    pub silent_units: Vec<u8>,
    /// Read each request, then close the connection instead of answering.
    pub drop_before_answer: bool,
    /// Acknowledge writes without storing them (a device that silently
    /// ignores remote setpoints, e.g. outside its remote-control mode).
    pub ignore_writes: bool,
}

pub type SharedFaults = Arc<Mutex<Faults>>;

/// A poisoned lock only means another holder panicked; the registers are still
/// plain data, so keep serving rather than cascade the panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct BankService {
    units: Arc<HashMap<u8, SharedBank>>,
    faults: SharedFaults,
    /// Devices on a serial bus: an absent or silent unit sends nothing.
    bus: bool,
}

type Answer = Result<Option<Response>, ExceptionCode>;

impl tokio_modbus::server::Service for BankService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let faults = lock(&self.faults).clone();
        let bank = self.units.get(&req.slave).cloned();
        let bus = self.bus;
        Box::pin(async move {
            let silent = faults.silent_units.contains(&req.slave);
            if bus && (silent || bank.is_none()) {
                // On a bus every device hears every request; only the addressed one answers.
                return Ok(None);
            }
            if silent {
                std::future::pending::<()>().await;
            }
            if let Some(d) = faults.delay {
                tokio::time::sleep(d).await;
            }
            if let Some(code) = faults.exception {
                return Err(ExceptionCode::new(code));
            }
            // The bank is locked only after the delay so that a slow answer
            // reflects the registers as they are when it is sent.
            let Some(bank) = bank else {
                return Err(ExceptionCode::GatewayTargetDevice);
            };
            if faults.ignore_writes {
                match &req.request {
                    Request::WriteSingleRegister(a, w) => {
                        return Ok(Some(Response::WriteSingleRegister(*a, *w)))
                    }
                    Request::WriteMultipleRegisters(a, ws) => {
                        return Ok(Some(Response::WriteMultipleRegisters(*a, ws.len() as u16)))
                    }
                    _ => {}
                }
            }
            let answer = lock(&bank).handle(&req.request);
            answer.map(Some)
        })
    }
}

/// A TCP stream that reports end-of-file once `drop_connections` is set, so the
/// server closes connections that were open before the fault was injected.
struct FaultyStream {
    inner: TcpStream,
    faults: SharedFaults,
}

impl AsyncRead for FaultyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if lock(&self.faults).drop_connections {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if lock(&self.faults).drop_before_answer {
            // The request was read; failing the answer ends the connection.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "fault: connection dropped before the answer",
            )));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `units` (unit id → bank) on an already-bound listener until
/// `shutdown` resolves. Functions 03, 04, 06 and 16; an unknown unit id gets
/// exception 0x0B (gateway target device failed to respond).
pub async fn serve(
    listener: TcpListener,
    units: HashMap<u8, SharedBank>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with_faults(listener, units, SharedFaults::default(), shutdown).await
}

/// [`serve`], with faults that can be changed through `faults` while it runs.
pub async fn serve_with_faults(
    listener: TcpListener,
    units: HashMap<u8, SharedBank>,
    faults: SharedFaults,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let on_connected = connection_handler(units, faults);
    let on_process_error = |e: io::Error| tracing::debug!("modbus server connection ended: {e}");
    let abort = sync_shutdown(shutdown);
    let result = Server::new(listener)
        .serve_until(&on_connected, on_process_error, abort.signal)
        .await;
    abort.relay.abort();
    result.map(|_| ())
}

/// [`serve_with_faults`] speaking Modbus RTU frames over TCP, as a transparent
/// serial-to-Ethernet gateway passes them: no MBAP header, a CRC per frame.
pub async fn serve_rtu_over_tcp(
    listener: TcpListener,
    units: HashMap<u8, SharedBank>,
    faults: SharedFaults,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let on_connected = connection_handler(units, faults);
    let on_process_error =
        |e: io::Error| tracing::debug!("modbus rtu server connection ended: {e}");
    let abort = sync_shutdown(shutdown);
    let result = tokio_modbus::server::rtu_over_tcp::Server::new(listener)
        .serve_until(&on_connected, on_process_error, abort.signal)
        .await;
    abort.relay.abort();
    result.map(|_| ())
}

/// Serves `units` as the devices on one RS-485 line, through `port` (in tests
/// and the simulator, the master side of a pseudo-terminal pair). Unlike a
/// gateway, a unit that does not exist, or that `faults.silent_units` names,
/// sends nothing at all, as an absent device on a bus does; the next request
/// is served as usual. `drop_connections` and `drop_before_answer` do not
/// apply: a serial line has no connection to drop.
pub async fn serve_rtu_serial(
    port: tokio_serial::SerialStream,
    units: HashMap<u8, SharedBank>,
    faults: SharedFaults,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let service = BankService {
        units: Arc::new(units),
        faults,
        bus: true,
    };
    let abort = sync_shutdown(shutdown);
    let result = tokio_modbus::server::rtu::Server::new(port)
        .serve_until(service, abort.signal)
        .await;
    abort.relay.abort();
    result.map(|_| ())
}

/// A connection taken on (or refused, `None`) by [`connection_handler`].
type Accepted =
    Pin<Box<dyn Future<Output = io::Result<Option<(BankService, FaultyStream)>>> + Send>>;

/// What a TCP server runs for each accepted connection: the bank service on a
/// stream that honours the connection faults.
fn connection_handler(
    units: HashMap<u8, SharedBank>,
    faults: SharedFaults,
) -> impl Fn(TcpStream, SocketAddr) -> Accepted {
    let units = Arc::new(units);
    move |stream: TcpStream, _peer: SocketAddr| {
        let units = Arc::clone(&units);
        let faults = Arc::clone(&faults);
        Box::pin(async move {
            if lock(&faults).drop_connections {
                return Ok(None);
            }
            let _ = stream.set_nodelay(true);
            let service = BankService {
                units,
                faults: Arc::clone(&faults),
                bus: false,
            };
            Ok(Some((
                service,
                FaultyStream {
                    inner: stream,
                    faults,
                },
            )))
        })
    }
}

/// A shutdown future turned into the `Sync` one `serve_until` wants (callers'
/// futures, e.g. holding a oneshot receiver, need not be `Sync`).
struct Abort<F> {
    signal: F,
    relay: tokio::task::JoinHandle<()>,
}

fn sync_shutdown(
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Abort<impl Future<Output = ()> + Send + Sync + 'static> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(());
    });
    Abort {
        signal: async move {
            let _ = rx.await;
        },
        relay,
    }
}
