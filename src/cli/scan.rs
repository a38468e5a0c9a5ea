//! `ped scan`: the SunSpec models of one Modbus device and their main values.

use super::*;

#[derive(clap::Args)]
pub struct ScanArgs {
    /// host:port, or the path of a serial port
    target: String,
    #[arg(long, default_value_t = 1)]
    unit: u8,
    /// host:port is a transparent serial gateway: RTU frames over TCP.
    #[arg(long)]
    rtu_over_tcp: bool,
    /// Serial port only: baud rate.
    #[arg(long, default_value_t = 19_200)]
    baud: u32,
    /// Serial port only: none, even or odd.
    #[arg(long, default_value = "even")]
    parity: String,
    /// Serial port only: 1 or 2.
    #[arg(long, default_value_t = 1)]
    stop_bits: u8,
    /// Per-request timeout, ms.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

pub(super) async fn scan_cmd(a: ScanArgs) -> Result<()> {
    let ScanArgs {
        target,
        unit,
        rtu_over_tcp,
        baud,
        parity,
        stop_bits,
        timeout_ms,
    } = a;
    let lib = library(None)?;
    let link = scan_link(&target, rtu_over_tcp, baud, &parity, stop_bits).await?;
    scan(
        &target,
        &link,
        unit,
        Duration::from_millis(timeout_ms),
        &lib,
    )
    .await
}

/// A target that is a path (starts with `/` or `.`) is a serial port; any
/// other is host:port.
async fn scan_link(
    target: &str,
    rtu_over_tcp: bool,
    baud: u32,
    parity: &str,
    stop_bits: u8,
) -> Result<ped::modbus::Link> {
    use ped::config::{Parity, SerialConfig};
    use ped::modbus::{Framing, Link, SerialLine};
    if target.starts_with('/') || target.starts_with('.') {
        let parity = match parity {
            "none" => Parity::None,
            "even" => Parity::Even,
            "odd" => Parity::Odd,
            other => anyhow::bail!("--parity {other}: expected none, even or odd"),
        };
        anyhow::ensure!(
            matches!(stop_bits, 1 | 2),
            "--stop-bits {stop_bits}: expected 1 or 2"
        );
        anyhow::ensure!(baud > 0, "--baud 0: give the line's rate, e.g. 19200");
        let line = SerialConfig {
            baud,
            parity,
            stop_bits,
            ..SerialConfig::default()
        };
        return Ok(Link::Serial(SerialLine::from_config(target, &line)));
    }
    let addr = tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("{target}: not host:port (nor a serial port path)"))?
        .next()
        .with_context(|| format!("{target} does not resolve"))?;
    let framing = if rtu_over_tcp {
        Framing::Rtu
    } else {
        Framing::Tcp
    };
    Ok(Link::Tcp { addr, framing })
}

async fn scan(
    target: &str,
    link: &ped::modbus::Link,
    unit: u8,
    timeout: Duration,
    lib: &ModelLibrary,
) -> Result<()> {
    use ped::modbus::{sunspec, ModbusClient};
    let mut c = ModbusClient::open(link, timeout).await?;
    let models = sunspec::discover(&mut c, unit).await?;
    println!("{target} unit {unit}: {} SunSpec model(s)", models.len());
    for m in models {
        let Some(map) = lib.sunspec(m.id) else {
            println!(
                "  model {:>4} at {} (len {}): no map in models/",
                m.id, m.addr, m.len
            );
            continue;
        };
        println!(
            "  model {:>4} {} at {} (len {})",
            m.id, map.name, m.addr, m.len
        );
        let len = map.block_len().min(m.len.saturating_add(2));
        // One model that cannot be read (or an older, shorter version of it)
        // must not hide the others.
        let words = match c.read(unit, map.table, m.addr, len).await {
            Ok(w) => w,
            Err(e) if !e.breaks_connection() => {
                println!("      cannot read: {e}");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for p in map.points.iter().filter(|p| {
            matches!(
                p.name.as_str(),
                "Mn" | "Md"
                    | "SN"
                    | "W"
                    | "WH"
                    | "SoC"
                    | "TotWhImp"
                    | "TotWhExp"
                    | "WRtg"
                    | "WSet"
                    | "WMaxLimPct"
                    | "ChaState"
                    | "Hz"
            )
        }) {
            let v = if matches!(p.ty, ped::registers::PointType::String) {
                match map.decode_string(&words, &p.name) {
                    Ok(v) => v.unwrap_or_else(|| "-".into()),
                    Err(e) => format!("cannot decode: {e}"),
                }
            } else {
                match map.decode_f64(&words, &p.name) {
                    Ok(v) => v
                        .map(|v| format!("{v} {}", p.unit.clone().unwrap_or_default()))
                        .unwrap_or_else(|| "not implemented".into()),
                    Err(e) => format!("cannot decode: {e}"),
                }
            };
            println!("      {:<12} {v}", p.name);
        }
    }
    Ok(())
}
