//! The text report: a summary, then aligned tables per lane and per mix entry.

use std::fmt::Write as _;

use rust_decimal::Decimal;

use crate::report::{Percentiles, Report};

impl Report {
    /// The report for a person: a summary, then aligned tables per lane and per mix entry.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let (sub, tp) = (&self.submissions, &self.throughput);
        let _ = writeln!(
            s,
            "tessera loadtest {}: {} at {} jobs/s for {} s (seed {})",
            self.run_id, self.url, self.rate, self.duration_s, self.seed
        );
        let late =
            if self.schedule.behind_schedule { "  BEHIND SCHEDULE: the generator was the bottleneck" } else { "" };
        let _ = writeln!(
            s,
            "schedule    {} planned, {} sent, max lateness {:.1} ms{late}",
            self.schedule.planned, self.schedule.sent, self.schedule.max_lateness_ms
        );
        let _ = writeln!(
            s,
            "submitted   {} ({:.2}/s), accepted {} ({:.2}/s), rejected {}, no answer {}",
            sub.sent, tp.submitted_per_s, sub.accepted, tp.accepted_per_s, sub.rejected, sub.transport_errors
        );
        let o = &self.outcomes;
        let _ = writeln!(
            s,
            "finished    {} in {:.1} s ({:.2}/s), {:.2} output s per wall s",
            o.succeeded + o.dead + o.cancelled,
            tp.finish_span_s,
            tp.finished_per_s,
            tp.output_seconds_per_wall_second
        );
        let _ = writeln!(
            s,
            "outcomes    succeeded {}, dead {}, cancelled {}, unfinished {}",
            o.succeeded, o.dead, o.cancelled, o.unfinished
        );
        if !self.unfinished_jobs.is_empty() {
            let _ = writeln!(s, "unfinished  {}", self.unfinished_jobs.join(" "));
        }
        let mut errors: Vec<String> =
            self.http_errors.iter().map(|e| format!("{} {}: {}", e.status, e.code, e.count)).collect();
        errors.extend(self.transport_errors.iter().map(|(k, n)| format!("{k}: {n}")));
        let _ = writeln!(s, "errors      {}", if errors.is_empty() { "none".into() } else { errors.join(", ") });
        s.push('\n');

        let ms = |p: Option<Percentiles>, f: fn(&Percentiles) -> i64| {
            p.map(|p| format!("{:.3}", f(&p) as f64 / 1000.0)).unwrap_or_else(|| "-".into())
        };
        let mut rows = vec![[
            "lane", "jobs", "ok", "dead", "cancel", "unfin", "wait p50", "wait p95", "wait p99", "run p50", "run p95",
            "run p99",
        ]
        .map(String::from)
        .to_vec()];
        for l in &self.lanes {
            let (w, r) = (l.queue_wait_ms, l.run_ms);
            rows.push(vec![
                l.lane.clone(),
                l.jobs.to_string(),
                l.outcomes.succeeded.to_string(),
                l.outcomes.dead.to_string(),
                l.outcomes.cancelled.to_string(),
                l.outcomes.unfinished.to_string(),
                ms(w, |p| p.p50),
                ms(w, |p| p.p95),
                ms(w, |p| p.p99),
                ms(r, |p| p.p50),
                ms(r, |p| p.p95),
                ms(r, |p| p.p99),
            ]);
        }
        s.push_str(&table(&rows));
        s.push_str("(queue wait = started - submitted, run = finished - started; seconds, server timestamps)\n\n");

        let mut rows =
            vec![["entry", "lane", "weight", "sent", "accepted", "rejected", "no answer"].map(String::from).to_vec()];
        for e in &self.entries {
            rows.push(vec![
                e.name.clone(),
                e.lane.clone(),
                e.weight.to_string(),
                e.sent.to_string(),
                e.accepted.to_string(),
                e.rejected.to_string(),
                e.transport_errors.to_string(),
            ]);
        }
        s.push_str(&table(&rows));
        s.push('\n');

        let c = &self.cost;
        let passes: Vec<String> =
            c.gpu_ns_by_pass.iter().map(|(p, ns)| format!("{p} {}", Decimal::new(*ns, 9))).collect();
        let _ = writeln!(
            s,
            "GPU         {} s ({}) over this run's {} jobs",
            c.gpu_seconds,
            passes.join(", "),
            self.outcomes_total()
        );
        let _ = writeln!(
            s,
            "charges     {} {} for {} output s (GET /v1/usage after - before: includes any other traffic of this \
             tenant during the run); succeeded jobs' prices {} {}",
            c.charges, c.currency, c.billed_output_seconds, c.price_of_succeeded, c.currency
        );
        let _ = writeln!(s, "wall        {:.1} s", self.wall_s);
        s
    }

    fn outcomes_total(&self) -> u64 {
        let o = &self.outcomes;
        o.succeeded + o.dead + o.cancelled + o.unfinished
    }
}

/// Left-aligned first column, right-aligned numbers.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|v| v.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, v)| if c == 0 { format!("{v:<w$}", w = widths[c]) } else { format!("{v:>w$}", w = widths[c]) })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::measured;

    #[test]
    fn the_text_report_aligns_its_tables() {
        let text = Report::build(&measured()).render_text();
        assert!(text.contains("errors      422 invalid_spec: 1"), "{text}");
        assert!(text.contains("unfinished  j3"), "{text}");
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("lane") || l.starts_with("standard ") || l.starts_with("bulk "))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        // Right-aligned columns: every row of the lane table ends at the same column.
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{text}");
        assert!(lines[2].contains("1.000"), "bulk's queue wait p50 in seconds: {text}");
    }
}
