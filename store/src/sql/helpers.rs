//! The transaction steps several `Backend` methods share (a job's row, a
//! transition of a fenced chunk, a claimed attempt's start, a tenant's lock),
//! written once for [`super::sql_backend!`], which expands this with it.

/// Inherent helpers of `$backend` on `$conn` connections and `$row` rows.
macro_rules! sql_helpers {
    ($backend:ident, $conn:ty, $row:ty) => {
        impl $backend {
            async fn job_in(tx: &mut $conn, id: &str) -> Result<Option<Job>> {
                let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await.db()?;
                row.as_ref().map(rows::job).transpose()
            }

            async fn month_usage_in(tx: &mut $conn, tenant: &str, month: &str) -> Result<MonthUsage> {
                let rows =
                    sqlx::query(rows::MONTH_USAGE_SQL).bind(tenant).bind(month).fetch_all(&mut *tx).await.db()?;
                rows::month_usage(&rows)
            }

            async fn release_in(tx: &mut $conn, job: &str) -> Result<()> {
                let release = sqlx::query("UPDATE reservations SET released = 1 WHERE job_id = $1").bind(job);
                release.execute(&mut *tx).await.db()?;
                Ok(())
            }

            /// Locks the tenant's row: admissions of one tenant take turns.
            async fn lock_tenant(tx: &mut $conn, tenant: &TenantId) -> Result<()> {
                let sql = format!("SELECT id FROM tenants WHERE id = $1{}", Self::SQL.lock_rows);
                let row = sqlx::query(&sql).bind(tenant.as_str()).fetch_optional(&mut *tx).await.db()?;
                row.ok_or_else(|| StoreError::UnknownTenant(tenant.to_string()))?;
                Ok(())
            }

            async fn reserve_in(
                tx: &mut $conn,
                job: &str,
                tenant: &str,
                month: &str,
                r: (u32, u32, i64),
            ) -> Result<()> {
                let (frames, fps, micros) = r;
                sqlx::query(
                    "INSERT INTO reservations (job_id, tenant_id, month, frames, fps, amount_micros)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(job)
                .bind(tenant)
                .bind(month)
                .bind(i64::from(frames))
                .bind(i64::from(fps))
                .bind(micros)
                .execute(&mut *tx)
                .await
                .db()?;
                Ok(())
            }

            /// Applies a transition to the fenced chunk of `lease` and its job inside `tx`.
            async fn transition_in(
                tx: &mut $conn,
                lease: &Lease,
                end: &AttemptEnd,
                now_ms: i64,
            ) -> Result<transition::ChunkSettlement> {
                // The job's row first: see the lock order in `chunks`.
                let sql = format!("SELECT {CURRENT_COLUMNS} FROM jobs WHERE id = $1{}", Self::SQL.lock_rows);
                let job = sqlx::query(&sql)
                    .bind(lease.job.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .db()?
                    .ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
                let fenced = format!("{}{}", chunks::FENCED, Self::SQL.lock_rows);
                let chunk = binds::lease(sqlx::query(&fenced), lease)
                    .fetch_optional(&mut *tx)
                    .await
                    .db()?
                    .ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
                let siblings = sqlx::query(chunks::SIBLINGS)
                    .bind(lease.job.as_str())
                    .bind(i64::from(lease.chunk))
                    .fetch_one(&mut *tx)
                    .await
                    .db()?;
                let cur = rows::chunk_current(&chunk, &siblings)?;
                // Errors name the settling attempt, not the job's latest.
                let job = transition::Current { attempts: lease.attempt, ..rows::current(&job)? };
                let mut s = transition::settle_chunk(now_ms, &job, &cur, end)
                    .map_err(|e| StoreError::corrupt("settlement", e))?;
                let res = binds::chunk_update(binds::lease(sqlx::query(chunks::UPDATE_CHUNK), lease), &s.chunk)
                    .execute(&mut *tx)
                    .await
                    .db()?;
                if res.rows_affected() != 1 {
                    return Err(StoreError::LeaseLost(lease.clone()));
                }
                let job_id = lease.job.as_str();
                if let Some(state) = s.close_others {
                    let close = sqlx::query(chunks::CLOSE_OTHERS).bind(job_id).bind(state.as_str());
                    close.execute(&mut *tx).await.db()?;
                }
                if s.unblock_join {
                    sqlx::query(chunks::UNBLOCK_JOIN).bind(job_id).bind(now_ms).execute(&mut *tx).await.db()?;
                }
                let ended = sqlx::query(chunks::END_ATTEMPT).bind(job_id).bind(i64::from(lease.attempt)).bind(now_ms);
                ended.execute(&mut *tx).await.db()?;
                for idx in &s.redo {
                    let gone = sqlx::query(storage::REMOVE_SEGMENT).bind(job_id).bind(i64::from(*idx)).bind(now_ms);
                    gone.execute(&mut *tx).await.db()?;
                }
                if let Some(seg) = &s.chunk.segment {
                    let kept = sqlx::query(storage::STORE_OBJECT)
                        .bind(&seg.path)
                        .bind("segment")
                        .bind(Some(i64::from(lease.chunk)));
                    kept.bind(seg.bytes).bind(now_ms).bind(job_id).execute(&mut *tx).await.db()?;
                }
                if let Some(out) = &s.job.output {
                    let kept = sqlx::query(storage::STORE_OBJECT).bind(&out.path).bind("clip").bind(None::<i64>);
                    kept.bind(out.bytes).bind(now_ms).bind(job_id).execute(&mut *tx).await.db()?;
                }
                for idx in &s.redo {
                    let redo = sqlx::query(chunks::REDO_RANGE).bind(job_id).bind(i64::from(*idx)).bind(now_ms);
                    redo.execute(&mut *tx).await.db()?;
                }
                if !s.job.state.is_final() {
                    let done = sqlx::query(chunks::FRAMES_DONE).bind(job_id).fetch_one(&mut *tx).await.db()?;
                    s.job.frames_done = u32::try_from(done.int("frames")?).unwrap_or(0);
                }
                let sql = format!("UPDATE jobs SET {} WHERE id = $13", binds::assignments("$", 1));
                binds::update(sqlx::query(&sql), &s.job).bind(job_id).execute(&mut *tx).await.db()?;
                if s.job.release_reservation {
                    Self::release_in(tx, job_id).await?;
                }
                if s.chunk.state == ChunkState::Queued || s.unblock_join || !s.redo.is_empty() {
                    Self::notify(tx).await?;
                }
                Ok(s)
            }

            /// Inserts a new job's chunks (after its row) inside `tx`.
            async fn insert_chunks(tx: &mut $conn, job: &NewJob) -> Result<()> {
                for (idx, (kind, first, frames)) in
                    chunk_plan(job.frames_total, job.chunk_frames).into_iter().enumerate()
                {
                    let state = if kind == ChunkKind::Join { ChunkState::Blocked } else { ChunkState::Queued };
                    sqlx::query(chunks::INSERT_CHUNK)
                        .bind(job.id.as_str())
                        .bind(idx as i64)
                        .bind(kind.as_str())
                        .bind(i64::from(first))
                        .bind(i64::from(frames))
                        .bind(state.as_str())
                        .execute(&mut *tx)
                        .await
                        .db()?;
                }
                Ok(())
            }

            /// Numbers the attempt of a claimed chunk and reads what its worker needs.
            async fn start_attempt(
                tx: &mut $conn,
                job: &str,
                idx: i64,
                owner: &WorkerId,
                now_ms: i64,
            ) -> Result<Claimed> {
                let attempts = sqlx::query(chunks::START_ATTEMPT).bind(job).bind(owner.as_str()).bind(now_ms);
                let attempt = attempts.fetch_one(&mut *tx).await.db()?.int("attempts")?;
                sqlx::query(chunks::NUMBER_ATTEMPT).bind(job).bind(idx).bind(attempt).execute(&mut *tx).await.db()?;
                let record = sqlx::query(chunks::RECORD_ATTEMPT).bind(job).bind(attempt).bind(idx);
                record.bind(owner.as_str()).bind(now_ms).execute(&mut *tx).await.db()?;
                let chunk = sqlx::query(&format!("SELECT {CHUNK_COLUMNS} FROM chunks WHERE job_id = $1 AND idx = $2"))
                    .bind(job)
                    .bind(idx)
                    .fetch_one(&mut *tx)
                    .await
                    .db()?;
                let lease = rows::chunk_lease(&chunk)?;
                let chunk = rows::chunk(&chunk)?;
                let job =
                    Self::job_in(tx, job).await?.ok_or_else(|| StoreError::corrupt("claim", "chunk without a job"))?;
                Ok(Claimed { job, chunk, lease })
            }

            /// GPU nanoseconds per pass a job's attempts (or one of them) recorded.
            async fn gpu_ns_in(tx: &mut $conn, job: &str, attempt: Option<u32>) -> Result<BTreeMap<Pass, i64>> {
                let rows: Vec<$row> = sqlx::query(
                    "SELECT pass, CAST(SUM(quantity) AS BIGINT) AS ns FROM usage_events
                     WHERE job_id = $1 AND kind = 'gpu' AND (CAST($2 AS BIGINT) IS NULL OR attempt = $2)
                     GROUP BY pass",
                )
                .bind(job)
                .bind(attempt.map(i64::from))
                .fetch_all(&mut *tx)
                .await
                .db()?;
                rows.iter().map(|r| Ok((rows::pass(&r.text("pass")?)?, r.int("ns")?))).collect()
            }

            /// Rolls up the ledger's first open month if it is before `open`, in
            /// one transaction: the month's rows summed into the rollups under a
            /// lock that holds off inserts into it, `open_from` moved past it.
            /// Returns the month closed, or `None` when none is due.
            async fn close_month(&self, open: &str) -> Result<Option<String>> {
                let mut tx = self.write().await?;
                let sql = format!("SELECT open_from FROM ledger_rollup{}", Self::SQL.lock_rows);
                let mut month = sqlx::query(&sql).fetch_one(&mut *tx).await.db()?.text("open_from")?;
                if month.is_empty() {
                    // Nothing rolled up yet: start at the ledger's first month
                    // (once; the ledger is held still while it is read).
                    if let Some(lock) = Self::SQL.lock_ledger {
                        sqlx::query(lock).execute(&mut *tx).await.db()?;
                    }
                    let first = sqlx::query("SELECT MIN(month) AS first FROM usage_events");
                    let Some(first) = first.fetch_one(&mut *tx).await.db()?.opt_text("first")? else {
                        tx.rollback().await.db()?;
                        return Ok(None);
                    };
                    month = first;
                    if month.as_str() >= open {
                        let start = sqlx::query("UPDATE ledger_rollup SET open_from = $1").bind(&month);
                        start.execute(&mut *tx).await.db()?;
                        tx.commit().await.db()?;
                        return Ok(None);
                    }
                }
                if month.as_str() >= open || crate::rollup::next_month(&month) == month {
                    tx.rollback().await.db()?;
                    return Ok(None);
                }
                if let Some(lift) = Self::SQL.long_statements {
                    sqlx::query(lift).execute(&mut *tx).await.db()?;
                }
                Self::lock_month(&mut tx, &month).await?;
                sqlx::query(crate::rollup::ROLL_UP_MONTH).bind(&month).execute(&mut *tx).await.db()?;
                let next = crate::rollup::next_month(&month);
                sqlx::query("UPDATE ledger_rollup SET open_from = $1").bind(&next).execute(&mut *tx).await.db()?;
                self.faults.check("rollup")?;
                tx.commit().await.db()?;
                Ok(Some(month))
            }

            /// The first month the ledger has not rolled up (see [`crate::rollup`]).
            async fn open_from(tx: &mut $conn) -> Result<String> {
                let row = sqlx::query("SELECT open_from FROM ledger_rollup").fetch_one(&mut *tx).await.db()?;
                row.text("open_from")
            }

            /// The claim's plan, bound as a worker claiming now would bind it.
            async fn explain_claim_sql(&self) -> Result<String> {
                let sql = format!("{} {}", Self::SQL.explain, Self::SQL.claim);
                let rows = sqlx::query(&sql)
                    .bind(tessera_metering::event::now_ms())
                    .bind("w_explain")
                    .bind(1i64)
                    .bind(3i64)
                    .fetch_all(&self.pool)
                    .await
                    .db()?;
                Self::plan_text(&rows)
            }
        }
    };
}

pub(crate) use sql_helpers;
