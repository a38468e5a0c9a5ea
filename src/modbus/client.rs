//! One Modbus connection (TCP, RTU over TCP, or RTU on a serial port) with a
//! timeout on every request.
//!
//! After a [`ModbusError::Timeout`] or [`ModbusError::Io`] the connection is
//! unusable: a late response to the abandoned request would otherwise be taken
//! for the answer to the next one. The client refuses further requests with
//! [`ModbusError::Io`]; the caller must drop it and [`ModbusClient::connect`]
//! again. So does a response whose header does not match its request (a
//! stray or late answer: [`ModbusError::Protocol`]). Exceptions leave the
//! connection usable.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_modbus::client::{Context, Reader as _, Writer as _};
use tokio_modbus::prelude::SlaveContext as _;
use tokio_modbus::Slave;

use super::{MAX_READ_WORDS, MAX_WRITE_WORDS};
use crate::registers::{Table, WriteMode};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModbusError {
    #[error("request timed out")]
    Timeout,
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("i/o error: {0}")]
    Io(String),
    #[error("device answered function {function:#04x} with exception {code:#04x}")]
    Exception { function: u8, code: u8 },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The answer arrived but its words make no sense for the map (e.g. a scale
    /// factor outside -10..=10): the device or its map is wrong, not the link.
    #[error("cannot decode: {0}")]
    Decode(String),
}

impl ModbusError {
    /// Short label for metrics: "timeout", "connection", "exception", "protocol" or "decode".
    pub fn kind(&self) -> &'static str {
        match self {
            ModbusError::Timeout => "timeout",
            ModbusError::Connect(_) | ModbusError::Io(_) => "connection",
            ModbusError::Exception { .. } => "exception",
            ModbusError::Protocol(_) => "protocol",
            ModbusError::Decode(_) => "decode",
        }
    }

    /// Whether the connection must be dropped after this error.
    pub fn breaks_connection(&self) -> bool {
        matches!(
            self,
            ModbusError::Timeout | ModbusError::Connect(_) | ModbusError::Io(_)
        )
    }
}

/// What travels over the TCP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Modbus TCP: MBAP header with a transaction id.
    #[default]
    Tcp,
    /// Modbus RTU frames (unit id, PDU, CRC), as a transparent serial gateway passes them.
    Rtu,
}

/// One RS-485 line as a serial port sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialLine {
    pub path: String,
    pub baud: u32,
    pub parity: tokio_serial::Parity,
    pub data_bits: tokio_serial::DataBits,
    pub stop_bits: tokio_serial::StopBits,
    /// Quiet time on the line before each request (3.5 characters in the spec).
    pub silence: Duration,
}

impl SerialLine {
    /// The line `path` configured as `[devices.serial]` says.
    pub fn from_config(path: &str, c: &crate::config::SerialConfig) -> SerialLine {
        use crate::config::Parity;
        SerialLine {
            path: path.to_string(),
            baud: c.baud,
            parity: match c.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            },
            data_bits: match c.data_bits {
                5 => tokio_serial::DataBits::Five,
                6 => tokio_serial::DataBits::Six,
                7 => tokio_serial::DataBits::Seven,
                _ => tokio_serial::DataBits::Eight,
            },
            stop_bits: if c.stop_bits == 2 {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            },
            silence: c.silence(),
        }
    }
}

/// Where an endpoint is and how frames travel to it.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    Tcp { addr: SocketAddr, framing: Framing },
    Serial(SerialLine),
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Tcp { addr, .. } => write!(f, "{addr}"),
            Link::Serial(l) => write!(f, "{}", l.path),
        }
    }
}

/// One connection; callers serialise access through `&mut self`.
pub struct ModbusClient {
    /// `None` once [`ModbusClient::close`] released the link.
    ctx: Option<Context>,
    peer: String,
    timeout: Duration,
    broken: bool,
    /// Serial lines only: the silence to keep before a request, and when the
    /// line last carried a frame.
    silence: Option<(Duration, tokio::time::Instant)>,
}

impl std::fmt::Debug for ModbusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusClient")
            .field("peer", &self.peer)
            .field("timeout", &self.timeout)
            .field("broken", &self.broken)
            .finish()
    }
}

impl ModbusClient {
    /// Connects within `timeout`, which also becomes the per-request timeout.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ModbusError> {
        Self::connect_framed(addr, timeout, Framing::Tcp).await
    }

    /// Opens `link`: a TCP connection, or the serial port.
    pub async fn open(link: &Link, timeout: Duration) -> Result<Self, ModbusError> {
        match link {
            Link::Tcp { addr, framing } => Self::connect_framed(*addr, timeout, *framing).await,
            Link::Serial(line) => Self::open_serial(line, timeout),
        }
    }

    /// Opens a serial port for Modbus RTU. The port is opened exclusively (a
    /// second master on the same line would garble both), and whatever sat in
    /// its input buffer is discarded: a late answer to a request abandoned on
    /// an earlier open must not be taken for the next one's.
    pub fn open_serial(line: &SerialLine, timeout: Duration) -> Result<Self, ModbusError> {
        use tokio_serial::SerialPort as _;
        let builder = tokio_serial::new(line.path.as_str(), line.baud)
            .parity(line.parity)
            .data_bits(line.data_bits)
            .stop_bits(line.stop_bits)
            .flow_control(tokio_serial::FlowControl::None);
        let port = tokio_serial::SerialStream::open(&builder)
            .map_err(|e| ModbusError::Connect(format!("{}: {e}", line.path)))?;
        port.clear(tokio_serial::ClearBuffer::Input)
            .map_err(|e| ModbusError::Connect(format!("{}: {e}", line.path)))?;
        let ctx = tokio_modbus::client::rtu::attach_slave(port, Slave(1));
        Ok(ModbusClient {
            ctx: Some(ctx),
            peer: line.path.clone(),
            timeout,
            broken: false,
            silence: Some((line.silence, tokio::time::Instant::now())),
        })
    }

    /// Releases the connection or the port now (a serial port is exclusive:
    /// it must be closed before it can be opened again).
    pub fn close(&mut self) {
        self.ctx = None;
        self.broken = true;
    }

    /// [`ModbusClient::connect`], speaking `framing` over the TCP stream.
    pub async fn connect_framed(
        addr: SocketAddr,
        timeout: Duration,
        framing: Framing,
    ) -> Result<Self, ModbusError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(ModbusError::Connect(format!("{addr}: timed out"))),
            Ok(Err(e)) => return Err(ModbusError::Connect(format!("{addr}: {e}"))),
            Ok(Ok(s)) => s,
        };
        // Requests are small and latency-bound; Nagle would hold them back.
        let _ = stream.set_nodelay(true);
        let ctx = match framing {
            Framing::Tcp => tokio_modbus::client::tcp::attach_slave(stream, Slave(1)),
            Framing::Rtu => tokio_modbus::client::rtu::attach_slave(stream, Slave(1)),
        };
        Ok(ModbusClient {
            ctx: Some(ctx),
            peer: addr.to_string(),
            timeout,
            broken: false,
            silence: None,
        })
    }

    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// The TCP peer or the serial port's path.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// False once a timeout or I/O error made the connection unusable.
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    /// Reads `count` registers, split into requests of at most 125, each under the timeout.
    pub async fn read(
        &mut self,
        unit: u8,
        table: Table,
        addr: u16,
        count: u16,
    ) -> Result<Vec<u16>, ModbusError> {
        if u32::from(addr) + u32::from(count) > 0x1_0000 {
            return Err(ModbusError::Protocol(format!(
                "read of {count} registers from {addr} runs past 65535"
            )));
        }
        let mut out = Vec::with_capacity(usize::from(count));
        let mut done = 0u16;
        while done < count {
            let n = (count - done).min(MAX_READ_WORDS);
            let start = addr + done;
            let words = self.read_chunk(unit, table, start, n).await?;
            if words.len() != usize::from(n) {
                return Err(ModbusError::Protocol(format!(
                    "asked for {n} registers at {start}, got {}",
                    words.len()
                )));
            }
            out.extend_from_slice(&words);
            done += n;
        }
        Ok(out)
    }

    async fn read_chunk(
        &mut self,
        unit: u8,
        table: Table,
        addr: u16,
        n: u16,
    ) -> Result<Vec<u16>, ModbusError> {
        self.quiet().await;
        let timeout = self.timeout;
        let ctx = self.ctx(unit)?;
        let (function, res) = match table {
            Table::Holding => (
                0x03,
                tokio::time::timeout(timeout, ctx.read_holding_registers(addr, n)).await,
            ),
            Table::Input => (
                0x04,
                tokio::time::timeout(timeout, ctx.read_input_registers(addr, n)).await,
            ),
        };
        self.settle(function, res)
    }

    /// Writes `words` from `addr`: function 16 (in chunks of 123), or function 06
    /// one word at a time when the device only supports that or there is one word.
    pub async fn write(
        &mut self,
        unit: u8,
        addr: u16,
        words: &[u16],
        mode: WriteMode,
    ) -> Result<(), ModbusError> {
        if addr as usize + words.len() > 0x1_0000 {
            return Err(ModbusError::Protocol(format!(
                "write of {} registers from {addr} runs past 65535",
                words.len()
            )));
        }
        if mode == WriteMode::SingleOnly || words.len() == 1 {
            for (i, w) in words.iter().enumerate() {
                self.quiet().await;
                let timeout = self.timeout;
                let ctx = self.ctx(unit)?;
                let a = addr + i as u16;
                let res = tokio::time::timeout(timeout, ctx.write_single_register(a, *w)).await;
                self.settle(0x06, res)?;
            }
            return Ok(());
        }
        for (i, chunk) in words.chunks(usize::from(MAX_WRITE_WORDS)).enumerate() {
            self.quiet().await;
            let timeout = self.timeout;
            let ctx = self.ctx(unit)?;
            let a = addr + (i * usize::from(MAX_WRITE_WORDS)) as u16;
            let res = tokio::time::timeout(timeout, ctx.write_multiple_registers(a, chunk)).await;
            self.settle(0x10, res)?;
        }
        Ok(())
    }

    /// The context addressed to `unit`, unless the link is broken or closed.
    fn ctx(&mut self, unit: u8) -> Result<&mut Context, ModbusError> {
        match (&mut self.ctx, self.broken) {
            (Some(ctx), false) => {
                ctx.set_slave(Slave(unit));
                Ok(ctx)
            }
            _ => Err(ModbusError::Io(format!(
                "connection to {} is unusable after an earlier timeout or i/o error; reconnect",
                self.peer
            ))),
        }
    }

    /// On a serial line, waits out the inter-frame silence since the last
    /// frame, so that every device on the bus sees where a request begins.
    async fn quiet(&mut self) {
        if let Some((silence, last)) = self.silence {
            tokio::time::sleep_until(last + silence).await;
        }
    }

    fn settle<T>(
        &mut self,
        function: u8,
        res: Result<tokio_modbus::Result<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, ModbusError> {
        if let Some((_, last)) = &mut self.silence {
            *last = tokio::time::Instant::now();
        }
        let out = match res {
            Err(_) => Err(ModbusError::Timeout),
            Ok(Err(tokio_modbus::Error::Transport(e))) => Err(ModbusError::Io(e.to_string())),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                // A header that does not match the request (transaction id, unit,
                // function) means the stream is out of step: every later answer
                // could belong to another request, so the connection is dropped.
                self.broken = true;
                Err(ModbusError::Protocol(e.to_string()))
            }
            Ok(Ok(Err(code))) => Err(ModbusError::Exception {
                function,
                code: code.into(),
            }),
            Ok(Ok(Ok(v))) => Ok(v),
        };
        if let Err(e) = &out {
            if e.breaks_connection() {
                self.broken = true;
            }
        }
        out
    }
}
