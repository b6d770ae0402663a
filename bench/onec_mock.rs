//! The mock 1C OData server of the tests (`tests/support/mock_onec.rs`) as a
//! process, for `bench/onec.sh`.
//!
//!   cargo run --release --example onec_mock -- 100000 --numbers /tmp/numbers.txt
//!
//! Loads `generated(COUNT)` (default 100000) on 127.0.0.1 (a free port),
//! prints `ONEC_MOCK url=<OData root>` on stdout, writes the phone numbers of
//! every listed counterparty (not a folder, not deletion-marked) as the PBX
//! sends them (`8XXXXXXXXXX`, shuffled with a fixed seed) to `--numbers`, then:
//!
//! - on SIGUSR1 re-writes every record, so every `DataVersion` changes (the
//!   next full read rebuilds every entry), and prints `ONEC_MOCK touched=<n>`;
//! - on SIGTERM or SIGINT prints `ONEC_MOCK stopped` and exits.
//!
//! For `bench/onec_writer.sh load`: `--writes` takes the 1C writer's
//! requests too (Бухгалтерия 3.0's write properties defined, as the writer's
//! tests start the mock; the write user `writer`), and `--payments N` serves
//! N payment documents (`--payment-rows` rows each) dated 10 s apart, all
//! within the payments poll's re-read window (`reread`, 3 days, for N up to
//! 25,000): every poll re-reads them all, unchanged.
//!
//! The rows are loaded in `Ref_Key` order: the mock sorts the whole entity set
//! for every page it answers, and on input already in order that sort is one
//! linear pass. That halves the mock's CPU per full read of 100,000 (0.6 s
//! instead of 1.2 s), CPU it takes from the gateway on the same machine.
//! The mock's request log is cleared on every touch and every few seconds.
//! One thread: the mock takes at most one of the machine's cores.

#[allow(dead_code)]
#[path = "../tests/support/mock_http.rs"]
mod mock_http;
#[allow(dead_code)]
#[path = "../tests/support/mock_onec.rs"]
mod mock_onec;

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use mock_onec::{MockCounterparty, MockOnec, MockPayment, MockPaymentRow};

/// How often the mock's request log is cleared between touches.
const LOG_RESET_EVERY: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(about = "Mock 1C OData server with COUNT generated counterparties (bench/onec.sh)")]
struct Args {
    /// Counterparties to generate (every 50th is a folder, every 40th deletion-marked).
    #[arg(default_value_t = 100_000)]
    count: usize,
    /// Write the listed counterparties' phone numbers here, one a line (8XXXXXXXXXX).
    #[arg(long)]
    numbers: Option<PathBuf>,
    /// Take the 1C writer's requests (creates, updates) as well.
    #[arg(long)]
    writes: bool,
    /// Payment documents (`Document_ПоступлениеНаРасчетныйСчет`) to serve.
    #[arg(long, default_value_t = 0)]
    payments: usize,
    /// Rows of each payment's `РасшифровкаПлатежа`.
    #[arg(long, default_value_t = 3)]
    payment_rows: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Signal handlers first: a signal sent as soon as the url line is out is
    // handled, not fatal.
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;

    let t0 = Instant::now();
    let mut records = mock_onec::generated(args.count);
    records.sort_by(|a, b| a.ref_key.cmp(&b.ref_key));
    let mock = if args.writes {
        MockOnec::start_for_writes().await
    } else {
        MockOnec::start().await
    };
    for c in &records {
        mock.upsert(c.clone());
    }
    if args.payments > 0 {
        mock.upsert_payments(payments(args.payments, args.payment_rows));
        eprintln!(
            "onec_mock: {} payment documents of {} rows",
            args.payments, args.payment_rows
        );
    }
    let listed = records.iter().filter(|c| c.listed()).count();
    if let Some(path) = &args.numbers {
        let n =
            write_numbers(path, &records).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "onec_mock: {n} caller numbers written to {}",
            path.display()
        );
    }
    eprintln!(
        "onec_mock: {} counterparties ({listed} listed) loaded in {} ms",
        records.len(),
        t0.elapsed().as_millis()
    );
    say(&format!("ONEC_MOCK url={}", mock.url()))?;

    let mut reset = tokio::time::interval(LOG_RESET_EVERY);
    reset.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = usr1.recv() => {
                let t = Instant::now();
                touch(&mock, &records);
                mock.reset_requests();
                eprintln!("onec_mock: {} records touched in {} ms", records.len(), t.elapsed().as_millis());
                say(&format!("ONEC_MOCK touched={}", records.len()))?;
            }
            _ = reset.tick() => mock.reset_requests(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    say("ONEC_MOCK stopped")?;
    Ok(())
}

/// `n` posted payment documents of `rows` rows, 10 s apart from
/// 2026-12-01T00:00:00 (1C's local time), distinct refs and invoices.
fn payments(n: usize, rows: usize) -> Vec<MockPayment> {
    const START: u64 = 1_764_547_200; // 2026-12-01T00:00:00Z
    (0..n)
        .map(|i| {
            let at = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(START + 10 * i as u64),
            )
            .to_string();
            let date = at.trim_end_matches('Z').to_owned();
            let mut p = MockPayment::new(&mock_onec::guid(1_000_000 + i as u64), &date, "0", "");
            p.amount = format!("{}.{:02}", 1000 + i % 9000, i % 100);
            p.rows = (0..rows)
                .map(|r| MockPaymentRow {
                    amount: if r == 0 { p.amount.clone() } else { "0".into() },
                    invoice: mock_onec::guid(5_000_000 + (i * rows + r) as u64),
                    contract: mock_onec::guid(9_000_000 + i as u64),
                })
                .collect();
            p
        })
        .collect()
}

/// One line on stdout, flushed at once (the script reads it from a file).
fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Re-writes every record: each gets a new `DataVersion`.
fn touch(mock: &MockOnec, records: &[MockCounterparty]) {
    for c in records {
        mock.upsert(c.clone());
    }
}

/// Writes the phones of the listed counterparties as the PBX sends a caller
/// (`8` and ten digits), in a fixed pseudo-random order. Returns how many.
fn write_numbers(path: &PathBuf, records: &[MockCounterparty]) -> std::io::Result<usize> {
    let mut numbers: Vec<String> = records
        .iter()
        .filter(|c| c.listed())
        .flat_map(|c| c.contacts.iter())
        .filter(|k| k.kind == "Телефон")
        .filter_map(|k| pbx_number(&k.phone_digits).or_else(|| pbx_number(&k.presentation)))
        .collect();
    // Fisher-Yates with a fixed xorshift: the same file for the same COUNT.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for i in (1..numbers.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        numbers.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    for n in &numbers {
        writeln!(out, "{n}")?;
    }
    out.flush()?;
    Ok(numbers.len())
}

/// `8` and the ten national digits of a Russian number written any way
/// (`+7 (9XX) XXX-XX-XX`, `8 495 …`, `7495…`); `None` for anything else.
fn pbx_number(text: &str) -> Option<String> {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    let national = match digits.len() {
        11 if digits.starts_with('7') || digits.starts_with('8') => &digits[1..],
        10 => &digits[..],
        _ => return None,
    };
    Some(format!("8{national}"))
}
