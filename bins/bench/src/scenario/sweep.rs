//! `sweep`: `drain` over a grid of batch sizes and ack windows, to choose the defaults.

use serde_json::{Value, json};

use super::drain::drain_once;
use super::{Ctx, Outcome, relay_config};
use crate::report::{median, round};
use crate::verify::Violations;

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> anyhow::Result<Outcome> {
    let n = ctx.args.messages.unwrap_or(20_000);
    let mut table = Vec::new();
    let mut violations = Violations::default();
    for &batch in &ctx.args.sweep_batch {
        for &window in &ctx.args.sweep_in_flight {
            if window < batch {
                table.push(json!({
                    "batch_size": batch,
                    "max_in_flight": window,
                    "messages_per_s": Value::Null,
                    "note": "invalid: max_in_flight < batch_size",
                }));
                continue;
            }
            let config = relay_config(Some(batch), Some(window), ctx.args.key_order)?;
            let mut rates = Vec::new();
            let mut last = None;
            for _ in 0..ctx.args.repeat {
                let run = drain_once(ctx.env, ctx.shape(), n, &config, "sweep").await?;
                violations.add(&run.violations);
                rates.push(run.messages_per_s);
                last = Some(run);
            }
            let phases = last.map(|r| r.phases);
            table.push(json!({
                "batch_size": batch,
                "max_in_flight": window,
                "messages_per_s": round(median(&rates), 0),
                "runs_messages_per_s": rates.iter().map(|r| round(*r, 0)).collect::<Vec<_>>(),
                "rows_per_claim": phases.as_ref().map(|p| round(p.rows_per_claim, 1)),
                "ms_per_claim": phases.as_ref().map(|p| round(p.ms_per_claim, 3)),
                "rows_per_complete": phases.as_ref().map(|p| round(p.rows_per_complete, 1)),
            }));
        }
    }
    Ok(Outcome {
        parameters: json!({
            "messages": n,
            "keys": ctx.args.keys,
            "payload_bytes": ctx.args.payload,
            "batch_sizes": ctx.args.sweep_batch,
            "max_in_flight": ctx.args.sweep_in_flight,
            "repeat": ctx.args.repeat,
            "key_order": super::key_order_name(ctx.args.key_order.to_key_order()),
        }),
        figures: json!({ "table": table }),
        violations,
    })
}
