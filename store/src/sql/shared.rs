//! The store's statements and transactions, written once: [`sql_backend!`]
//! expands to a backend's `impl Backend` (and, through
//! [`super::sql_helpers!`], the steps its methods share), compiled against
//! that backend's driver. The expanding module brings [`super::prelude`] into scope, its
//! `err` (its error codes' meanings) and `Db` (`.db()` on a driver result),
//! and gives the backend type these inherent items:
//!
//! - fields `pool` (the driver's pool) and `faults`;
//! - `KIND`, and `SQL`, its [`super::Dialect`];
//! - `write(&self)`, a write transaction ([`super::Tx`]), `snapshot(&self)`,
//!   a read-only one on one snapshot, and `turn(&self)`, the turn a single
//!   write statement outside a transaction takes;
//! - `make_months(&self, months)`, the ledger's partitions of those months,
//!   and `lock_month(conn, month)`, holding off inserts into a month;
//! - `notify(conn)`, telling the fleet that work was queued;
//! - `append_in(conn, events)`, the ledger's batch insert (for each event,
//!   whether it was new);
//! - `db_clock_ms(&self)`, `listen_for_work(&self, wake)` and
//!   `plan_text(rows)` (an `EXPLAIN`'s rows as text).

/// Implements `Backend` for `$backend` on `$conn` connections and `$row` rows.
macro_rules! sql_backend {
    ($backend:ident, $conn:ty, $row:ty) => {
        crate::sql::sql_helpers!($backend, $conn, $row);

        #[async_trait]
        impl Backend for $backend {
            fn kind(&self) -> crate::backend::BackendKind {
                Self::KIND
            }

            fn faults(&self) -> &Faults {
                &self.faults
            }

            async fn server_clock_ms(&self) -> Result<Option<i64>> {
                self.db_clock_ms().await
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await.db()?;
                Ok(())
            }

            async fn create_tenant(&self, t: &Tenant, api_key_hash: Option<&str>, now_ms: i64) -> Result<()> {
                let _turn = self.turn().await;
                let res = sqlx::query(
                    "INSERT INTO tenants (id, name, tier, api_key_hash, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(t.id.as_str())
                .bind(&t.name)
                .bind(&t.tier)
                .bind(api_key_hash)
                .bind(now_ms)
                .execute(&self.pool)
                .await;
                match res {
                    Ok(_) => Ok(()),
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        Err(StoreError::TenantExists(t.name.clone()))
                    }
                    Err(e) => Err(err(e)),
                }
            }

            async fn set_api_key(&self, tenant: &TenantId, api_key_hash: &str) -> Result<()> {
                let _turn = self.turn().await;
                let res = sqlx::query("UPDATE tenants SET api_key_hash = $1 WHERE id = $2")
                    .bind(api_key_hash)
                    .bind(tenant.as_str())
                    .execute(&self.pool)
                    .await
                    .db()?;
                match res.rows_affected() {
                    1 => Ok(()),
                    _ => Err(StoreError::UnknownTenant(tenant.to_string())),
                }
            }

            async fn tenant(&self, name_or_id: &str) -> Result<Option<Tenant>> {
                let row = sqlx::query("SELECT id, name, tier FROM tenants WHERE name = $1 OR id = $1")
                    .bind(name_or_id)
                    .fetch_optional(&self.pool)
                    .await
                    .db()?;
                row.as_ref().map(rows::tenant).transpose()
            }

            async fn tenant_by_key_hash(&self, api_key_hash: &str) -> Result<Option<Tenant>> {
                let row = sqlx::query("SELECT id, name, tier FROM tenants WHERE api_key_hash = $1")
                    .bind(api_key_hash)
                    .fetch_optional(&self.pool)
                    .await
                    .db()?;
                row.as_ref().map(rows::tenant).transpose()
            }

            async fn tenants(&self) -> Result<Vec<Tenant>> {
                let rows =
                    sqlx::query("SELECT id, name, tier FROM tenants ORDER BY name").fetch_all(&self.pool).await.db()?;
                rows.iter().map(rows::tenant).collect()
            }

            async fn month_usage(&self, tenant: &TenantId, month: &str) -> Result<MonthUsage> {
                let mut conn = self.pool.acquire().await.db()?;
                Self::month_usage_in(&mut conn, tenant.as_str(), month).await
            }

            async fn submit(&self, s: &Submit<'_>) -> Result<Submitted> {
                let mut tx = self.write().await?;
                Self::lock_tenant(&mut tx, &s.tenant.id).await?;
                if let Some(key) = &s.job.idempotency_key {
                    // Under the tenant's lock: a racing submission with this key has committed or not started.
                    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2");
                    let existing = sqlx::query(&sql)
                        .bind(s.tenant.id.as_str())
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await
                        .db()?;
                    if let Some(row) = existing {
                        let job = rows::job(&row)?;
                        return Ok(if job.body_hash == s.job.body_hash {
                            Submitted::Existing(job)
                        } else {
                            Submitted::Conflict(job)
                        });
                    }
                }
                let month = month_of(s.now_ms);
                let usage = Self::month_usage_in(&mut tx, s.tenant.id.as_str(), &month).await?;
                let warnings = s.tier.check_caps(&s.tenant.tier, &usage, s.output_seconds, s.price)?;
                let j = s.job;
                let amounts = (j.frames_total, j.fps, j.price_micros);
                Self::reserve_in(&mut tx, j.id.as_str(), s.tenant.id.as_str(), &month, amounts).await?;
                let sql = format!(
                    "INSERT INTO jobs ({JOB_INSERT_COLUMNS}) VALUES ({}, 'queued') RETURNING {JOB_RETURNING}",
                    binds::placeholders("$", 1, 19)
                );
                let row =
                    binds::new_job(sqlx::query(&sql), j, s.tier_weight_ms, s.now_ms).fetch_one(&mut *tx).await.db()?;
                let job = rows::job(&row)?;
                Self::insert_chunks(&mut tx, j).await?;
                Self::notify(&mut tx).await?;
                self.faults.check("submit")?;
                tx.commit().await.db()?;
                Ok(Submitted::New { job, warnings })
            }

            #[cfg(feature = "testing")]
            async fn enqueue_unchecked(&self, jobs: &[NewJob], tier_weight_ms: i64, now_ms: i64) -> Result<()> {
                let mut tx = self.write().await?;
                let sql = format!(
                    "INSERT INTO jobs ({JOB_INSERT_COLUMNS}) VALUES ({}, 'queued')",
                    binds::placeholders("$", 1, 19)
                );
                for job in jobs {
                    binds::new_job(sqlx::query(&sql), job, tier_weight_ms, now_ms).execute(&mut *tx).await.db()?;
                    Self::insert_chunks(&mut tx, job).await?;
                }
                Self::notify(&mut tx).await?;
                tx.commit().await.db()
            }

            async fn reserve(&self, r: &Reserve<'_>) -> Result<Vec<String>> {
                let mut tx = self.write().await?;
                Self::lock_tenant(&mut tx, &r.tenant.id).await?;
                let exists = sqlx::query("SELECT 1 FROM reservations WHERE job_id = $1").bind(r.job.as_str());
                if exists.fetch_optional(&mut *tx).await.db()?.is_some() {
                    return Ok(Vec::new());
                }
                let month = month_of(r.now_ms);
                let usage = Self::month_usage_in(&mut tx, r.tenant.id.as_str(), &month).await?;
                let warnings = r.tier.check_caps(&r.tenant.tier, &usage, r.output_seconds, r.price)?;
                let amounts = (r.frames, r.fps, tessera_metering::price::to_micros(r.price));
                Self::reserve_in(&mut tx, r.job.as_str(), r.tenant.id.as_str(), &month, amounts).await?;
                tx.commit().await.db()?;
                Ok(warnings)
            }

            async fn finish_reserved(&self, job: &JobId, events: &[UsageEvent]) -> Result<Vec<bool>> {
                let mut tx = self.write().await?;
                let inserted = Self::append_in(&mut tx, events).await?;
                Self::release_in(&mut tx, job.as_str()).await?;
                tx.commit().await.db()?;
                Ok(inserted)
            }

            async fn job(&self, id: &JobId) -> Result<Option<Job>> {
                let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .db()?;
                row.as_ref().map(rows::job).transpose()
            }

            async fn jobs(&self, tenant: &TenantId, f: &JobFilter) -> Result<Vec<Job>> {
                let rows = sqlx::query(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND (CAST($2 AS TEXT) IS NULL OR state = $2)
                     AND (CAST($3 AS TEXT) IS NULL OR lane = $3)
                     AND (CAST($4 AS BIGINT) IS NULL OR created_at_ms < $4 OR (created_at_ms = $4 AND id < $5))
                     ORDER BY created_at_ms DESC, id DESC LIMIT $6"
                ))
                .bind(tenant.as_str())
                .bind(f.state.map(JobState::as_str))
                .bind(f.lane.map(Lane::as_str))
                .bind(f.before.as_ref().map(|b| b.0))
                .bind(f.before.as_ref().map(|b| b.1.as_str()))
                .bind(i64::from(f.limit))
                .fetch_all(&self.pool)
                .await
                .db()?;
                rows.iter().map(rows::job).collect()
            }

            async fn request_cancel(&self, id: &JobId, now_ms: i64) -> Result<Option<Job>> {
                let mut tx = self.write().await?;
                // The job's row is locked first, so a settlement or a reap changing its
                // chunks meanwhile cannot slip between reading and changing them.
                let sql = format!("SELECT state FROM jobs WHERE id = $1{}", Self::SQL.lock_rows);
                let state = sqlx::query(&sql).bind(id.as_str());
                let Some(row) = state.fetch_optional(&mut *tx).await.db()? else { return Ok(None) };
                if !rows::state(&row)?.is_final() {
                    let progress = sqlx::query(chunks::PROGRESS).bind(id.as_str()).fetch_one(&mut *tx).await.db()?;
                    let (running, started) = (progress.int("running")?, progress.int("started")?);
                    if running == 0 && started == 0 {
                        // Nothing delivered and nothing running: cancelled at once.
                        sqlx::query("UPDATE jobs SET state = 'cancelled', finished_at_ms = $1 WHERE id = $2")
                            .bind(now_ms)
                            .bind(id.as_str())
                            .execute(&mut *tx)
                            .await
                            .db()?;
                        let close =
                            sqlx::query(chunks::CLOSE_OTHERS).bind(id.as_str()).bind(ChunkState::Cancelled.as_str());
                        close.execute(&mut *tx).await.db()?;
                        Self::release_in(&mut tx, id.as_str()).await?;
                    } else {
                        // Running chunks stop at their next frame; the job ends when
                        // its last one settles (at its join when it has one).
                        let flag =
                            sqlx::query("UPDATE jobs SET cancel_requested = TRUE WHERE id = $1").bind(id.as_str());
                        flag.execute(&mut *tx).await.db()?;
                        sqlx::query(chunks::CANCEL_QUEUED).bind(id.as_str()).execute(&mut *tx).await.db()?;
                        if running == 0 {
                            let unblock = sqlx::query(chunks::UNBLOCK_JOIN).bind(id.as_str()).bind(now_ms);
                            unblock.execute(&mut *tx).await.db()?;
                            Self::notify(&mut tx).await?;
                        }
                    }
                }
                let job = Self::job_in(&mut tx, id.as_str()).await?;
                tx.commit().await.db()?;
                Ok(job)
            }

            async fn claim(
                &self,
                owner: &WorkerId,
                now_ms: i64,
                lease_ms: i64,
                sharers: u32,
            ) -> Result<Option<Claimed>> {
                let mut tx = self.write().await?;
                let row = sqlx::query(Self::SQL.claim)
                    .bind(now_ms)
                    .bind(owner.as_str())
                    .bind(lease_ms)
                    .bind(i64::from(sharers.max(1)))
                    .fetch_optional(&mut *tx)
                    .await
                    .db()?;
                let Some(row) = row else { return Ok(None) };
                let claimed =
                    Self::start_attempt(&mut tx, &row.text("job_id")?, row.int("idx")?, owner, now_ms).await?;
                tx.commit().await.db()?;
                Ok(Some(claimed))
            }

            async fn heartbeat(&self, lease: &Lease, until_ms: i64, frames_done: u32) -> Result<bool> {
                let mut tx = self.write().await?;
                let beat = binds::lease(sqlx::query(chunks::HEARTBEAT), lease)
                    .bind(until_ms)
                    .bind(i64::from(frames_done));
                beat.fetch_optional(&mut *tx).await.db()?.ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
                let row = sqlx::query(chunks::CANCEL_ASKED).bind(lease.job.as_str()).fetch_one(&mut *tx).await.db()?;
                let cancel = row.flag("cancel_requested")?;
                tx.commit().await.db()?;
                Ok(cancel)
            }

            async fn settle(
                &self,
                lease: &Lease,
                end: &AttemptEnd,
                events: &[UsageEvent],
                now_ms: i64,
            ) -> Result<Settled> {
                let mut tx = self.write().await?;
                Self::transition_in(&mut tx, lease, end, now_ms).await?;
                let inserted = Self::append_in(&mut tx, events).await?;
                let job = Self::job_in(&mut tx, lease.job.as_str())
                    .await?
                    .ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
                self.faults.check("settle")?;
                tx.commit().await.db()?;
                Ok(Settled { job, inserted })
            }

            async fn reap(&self, now_ms: i64, me: &WorkerId, live: &[JobId], limit: u32) -> Result<Vec<Reaped>> {
                let mut tx = self.write().await?;
                let live = serde_json::to_string(&live).map_err(|e| StoreError::Query(e.to_string()))?;
                let sql = format!(
                    "SELECT c.job_id AS job_id, c.idx AS idx, c.kind AS kind, c.attempt AS attempt,
                            c.lease_owner AS lease_owner, j.tenant_id AS tenant_id, COALESCE(t.tier, '') AS tier
                     FROM chunks c JOIN jobs j ON j.id = c.job_id LEFT JOIN tenants t ON t.id = j.tenant_id
                     WHERE c.state = 'running' AND c.lease_until_ms < $1
                       AND (c.lease_owner <> $2 OR c.job_id NOT IN ({}))
                     ORDER BY c.lease_until_ms LIMIT $4",
                    Self::SQL.json_strings_of_3
                );
                let expired = sqlx::query(&sql)
                    .bind(now_ms)
                    .bind(me.as_str())
                    .bind(live)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await
                    .db()?;
                let lost = AttemptEnd::Interrupted { reason: LOST_LEASE_REASON.into(), retry_in_ms: 0 };
                let job_sql = format!("SELECT id FROM jobs WHERE id = $1{}", Self::SQL.lock_rows_or_skip);
                let chunk_sql = format!("{} AND lease_until_ms < $5{}", chunks::FENCED, Self::SQL.lock_rows);
                let mut reaped = Vec::with_capacity(expired.len());
                for row in &expired {
                    let lease = rows::chunk_lease(row)?;
                    let tier = row.text("tier")?;
                    // Job first (another reaper or a settlement holding it: skipped),
                    // then the chunk, still expired under the lock.
                    let job = sqlx::query(&job_sql).bind(lease.job.as_str());
                    if job.fetch_optional(&mut *tx).await.db()?.is_none() {
                        continue;
                    }
                    let chunk = binds::lease(sqlx::query(&chunk_sql), &lease).bind(now_ms);
                    if chunk.fetch_optional(&mut *tx).await.db()?.is_none() {
                        continue;
                    }
                    match Self::transition_in(&mut tx, &lease, &lost, now_ms).await {
                        Ok(_) => {}
                        // An earlier row of this reap ended the job and with it this chunk.
                        Err(StoreError::LeaseLost(_)) => continue,
                        Err(e) => return Err(e),
                    }
                    let attempt = AttemptRef {
                        tenant_id: row.text("tenant_id")?,
                        tier: tier.clone(),
                        job_id: lease.job.to_string(),
                        attempt: lease.attempt,
                        chunk: (row.text("kind")? != ChunkKind::Whole.as_str()).then_some(lease.chunk),
                    };
                    let end =
                        UsageEvent { occurred_at_ms: now_ms, ..UsageEvent::attempt_end(&attempt, Outcome::Interrupted) };
                    Self::append_in(&mut tx, &[end]).await?;
                    let gpu_ns = Self::gpu_ns_in(&mut tx, lease.job.as_str(), Some(lease.attempt)).await?;
                    let job = Self::job_in(&mut tx, lease.job.as_str())
                        .await?
                        .ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
                    reaped.push(Reaped { lease, tier, job, gpu_ns });
                }
                if let Err(e) = self.faults.check("reap") {
                    // The next reaper finds the rows this one held free.
                    tx.rollback().await.db()?;
                    return Err(e);
                }
                tx.commit().await.db()?;
                Ok(reaped)
            }

            async fn depths(&self) -> Result<Vec<(Lane, LaneDepth)>> {
                let rows = sqlx::query(crate::sql::DEPTHS_SQL).fetch_all(&self.pool).await.db()?;
                rows::depths(&rows)
            }

            async fn chunks(&self, job: &JobId) -> Result<Vec<Chunk>> {
                let rows = sqlx::query(&format!("SELECT {CHUNK_COLUMNS} FROM chunks WHERE job_id = $1 ORDER BY idx"))
                    .bind(job.as_str())
                    .fetch_all(&self.pool)
                    .await
                    .db()?;
                rows.iter().map(rows::chunk).collect()
            }

            async fn chunk_gpu_ns(&self, job: &JobId) -> Result<BTreeMap<(u32, Pass), i64>> {
                let rows = sqlx::query(chunks::CHUNK_GPU).bind(job.as_str()).fetch_all(&self.pool).await.db()?;
                rows::chunk_gpu(&rows)
            }

            async fn segments(&self) -> Result<Vec<StoredSegment>> {
                let rows = sqlx::query(chunks::SEGMENTS).fetch_all(&self.pool).await.db()?;
                rows.iter().map(rows::stored_segment).collect()
            }

            async fn ended_attempts(&self, from_ms: i64, to_ms: i64, limit: u32) -> Result<Vec<EndedAttempt>> {
                let rows = sqlx::query(chunks::ENDED_ATTEMPTS)
                    .bind(from_ms)
                    .bind(to_ms)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .db()?;
                rows.iter().map(rows::ended_attempt).collect()
            }

            async fn mark(&self, name: &str) -> Result<Option<i64>> {
                let row = sqlx::query(storage::MARK).bind(name).fetch_optional(&self.pool).await.db()?;
                row.map(|r| r.int("closed_to_ms")).transpose()
            }

            async fn set_mark(&self, name: &str, ms: i64) -> Result<()> {
                let _turn = self.turn().await;
                sqlx::query(storage::SET_MARK).bind(name).bind(ms).execute(&self.pool).await.db()?;
                Ok(())
            }

            async fn forget_segments(&self, job: &JobId, now_ms: i64) -> Result<()> {
                let mut tx = self.write().await?;
                sqlx::query(chunks::FORGET_SEGMENTS).bind(job.as_str()).execute(&mut *tx).await.db()?;
                let gone = sqlx::query(storage::REMOVE_SEGMENTS).bind(job.as_str()).bind(now_ms);
                gone.execute(&mut *tx).await.db()?;
                tx.commit().await.db()
            }

            async fn close_storage_periods(
                &self,
                now_ms: i64,
                period_ms: i64,
            ) -> Result<(Vec<UsageEvent>, Vec<bool>)> {
                let mut tx = self.write().await?;
                let start = storage::first_boundary(now_ms, period_ms);
                sqlx::query(storage::START_METER).bind(start).bind(period_ms).execute(&mut *tx).await.db()?;
                // The leader's lock: a second worker closing periods waits, then finds them closed.
                let watermark = format!("{}{}", storage::WATERMARK, Self::SQL.lock_rows);
                let mark = sqlx::query(&watermark).fetch_one(&mut *tx).await.db()?;
                let closed_to = mark.int("closed_to_ms")?;
                let mut events = Vec::new();
                let mut to = closed_to;
                for a in storage::due_periods(closed_to, period_ms, now_ms) {
                    let during = sqlx::query(storage::STORED_DURING).bind(a).bind(a + period_ms);
                    let rows = during.fetch_all(&mut *tx).await.db()?;
                    events.extend(storage::period_events(&rows, a, period_ms)?);
                    to = a + period_ms;
                }
                let inserted = Self::append_in(&mut tx, &events).await?;
                sqlx::query(storage::MOVE_WATERMARK).bind(to).bind(period_ms).execute(&mut *tx).await.db()?;
                tx.commit().await.db()?;
                Ok((events, inserted))
            }

            async fn explain_claim(&self) -> Result<String> {
                self.explain_claim_sql().await
            }

            async fn explain_hot_paths(&self) -> Result<Vec<(String, String)>> {
                let sample: Vec<(String, i64)> = sqlx::query(crate::backend::EXPLAIN_SAMPLE_SQL)
                    .fetch_all(&self.pool)
                    .await
                    .db()?
                    .iter()
                    .map(|r| Ok((r.text("tenant_id")?, r.int("occurred_at_ms")?)))
                    .collect::<Result<_>>()?;
                let (tenant, month) = crate::backend::explain_binds(&sample, tessera_metering::event::now_ms());
                let plan = |sql: &str| format!("{} {sql}", Self::SQL.explain);
                let mut plans = vec![("claim".to_string(), self.explain_claim_sql().await?)];
                let rows = sqlx::query(&plan(crate::sql::DEPTHS_SQL)).fetch_all(&self.pool).await.db()?;
                plans.push(("depths".into(), Self::plan_text(&rows)?));
                let open_from = Self::open_from(&mut *self.pool.acquire().await.db()?).await?;
                let totals = plan(rows::USAGE_TOTALS_SQL);
                let rows = sqlx::query(&totals).bind(&tenant).bind(&open_from).fetch_all(&self.pool).await.db()?;
                plans.push(("usage totals of a tenant".into(), Self::plan_text(&rows)?));
                let charged = plan(rows::CHARGED_SQL);
                let rows = sqlx::query(&charged).bind(&open_from).fetch_all(&self.pool).await.db()?;
                plans.push(("charges of the whole ledger".into(), Self::plan_text(&rows)?));
                let month_usage = plan(rows::MONTH_USAGE_SQL);
                let rows = sqlx::query(&month_usage).bind(&tenant).bind(&month).fetch_all(&self.pool).await.db()?;
                plans.push(("month usage of a tenant".into(), Self::plan_text(&rows)?));
                for with_tenant in [true, false] {
                    let sql = plan(&rows::events_page_sql(with_tenant));
                    let mut q = sqlx::query(&sql).bind(i64::MIN).bind(i64::MAX).bind(i64::MIN).bind("").bind(1000i64);
                    if with_tenant {
                        q = q.bind(&tenant);
                    }
                    let rows = q.fetch_all(&self.pool).await.db()?;
                    let name = if with_tenant { "events page of a tenant" } else { "events page of all tenants" };
                    plans.push((name.into(), Self::plan_text(&rows)?));
                }
                Ok(plans)
            }

            #[cfg(feature = "testing")]
            async fn tamper_with_ledger(&self) -> Result<(Option<String>, Option<String>)> {
                let _turn = self.turn().await;
                let update = sqlx::query("UPDATE usage_events SET quantity = 0").execute(&self.pool).await;
                let delete = sqlx::query("DELETE FROM usage_events").execute(&self.pool).await;
                Ok((update.err().map(|e| e.to_string()), delete.err().map(|e| e.to_string())))
            }

            async fn append_fenced(&self, lease: &Lease, events: &[UsageEvent]) -> Result<Vec<bool>> {
                let sql = format!("{}{}", chunks::HOLDS_LEASE, Self::SQL.share_rows);
                let mut tx = self.write().await?;
                let held = binds::lease(sqlx::query(&sql), lease).fetch_optional(&mut *tx).await.db()?;
                held.ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
                let inserted = Self::append_in(&mut tx, events).await?;
                self.faults.check("append")?;
                tx.commit().await.db()?;
                Ok(inserted)
            }

            async fn append(&self, events: &[UsageEvent]) -> Result<Vec<bool>> {
                let mut tx = self.write().await?;
                let inserted = Self::append_in(&mut tx, events).await?;
                self.faults.check("append")?;
                tx.commit().await.db()?;
                Ok(inserted)
            }

            async fn events_page(
                &self,
                f: &EventFilter,
                tenant: Option<&TenantId>,
                after: Option<(i64, String)>,
                limit: u32,
            ) -> Result<Vec<UsageEvent>> {
                let sql = rows::events_page_sql(tenant.is_some());
                let (after_ms, after_id) = after.unwrap_or((i64::MIN, String::new()));
                // The key's time is the page's lower bound too: SQLite bounds the
                // index range by `$1`, not by the row comparison.
                let mut q = sqlx::query(&sql)
                    .bind(f.from_ms.unwrap_or(i64::MIN).max(after_ms))
                    .bind(f.to_ms.unwrap_or(i64::MAX))
                    .bind(after_ms)
                    .bind(after_id)
                    .bind(i64::from(limit));
                if let Some(t) = tenant {
                    q = q.bind(t.as_str().to_string());
                }
                let rows = q.fetch_all(&self.pool).await.db()?;
                rows.iter().map(rows::event).collect()
            }

            async fn job_gpu_ns(&self, job: &JobId) -> Result<BTreeMap<Pass, i64>> {
                let mut conn = self.pool.acquire().await.db()?;
                Self::gpu_ns_in(&mut conn, job.as_str(), None).await
            }

            async fn usage_totals(&self, tenant: &TenantId) -> Result<UsageTotals> {
                // One snapshot: a month closed meanwhile is counted once, rolled up or not.
                let mut tx = self.snapshot().await?;
                let open_from = Self::open_from(&mut tx).await?;
                let totals = sqlx::query(rows::USAGE_TOTALS_SQL).bind(tenant.as_str()).bind(open_from);
                let rows = totals.fetch_all(&mut *tx).await.db()?;
                tx.commit().await.db()?;
                rows::usage_totals(&rows)
            }

            async fn maintain_ledger(&self, now_ms: i64) -> Result<Vec<String>> {
                let this = month_of(now_ms);
                let next = crate::rollup::next_month(&this);
                if let Err(e) = self.make_months(&[this, next]).await {
                    // Made on a later run just as well; the roll-up does not wait for it.
                    tracing::warn!(error = %e, "making the ledger's partitions ahead failed");
                }
                // Months that ended a grace period ago, oldest first, one per
                // transaction (each holds off late inserts into its month only).
                let open = month_of(now_ms - crate::rollup::CLOSE_AFTER_MS);
                let mut closed = Vec::new();
                while closed.len() < crate::rollup::MONTHS_PER_CALL {
                    match self.close_month(&open).await? {
                        Some(month) => closed.push(month),
                        None => break,
                    }
                }
                Ok(closed)
            }

            async fn gpu_ns_totals(&self) -> Result<GpuTotals> {
                let rows = sqlx::query(
                    "SELECT g.tenant_id AS tenant_id, g.pass AS pass, COALESCE(e.outcome, 'running') AS outcome,
                            CAST(SUM(g.quantity) AS BIGINT) AS ns
                     FROM usage_events g LEFT JOIN usage_events e
                       ON e.kind = 'attempt_end' AND e.job_id = g.job_id AND e.attempt = g.attempt
                     WHERE g.kind = 'gpu' GROUP BY 1, 2, 3",
                )
                .fetch_all(&self.pool)
                .await
                .db()?;
                let key = |r: &$row| Ok(((r.text("tenant_id")?, r.text("pass")?, r.text("outcome")?), r.int("ns")?));
                rows.iter().map(key).collect()
            }

            async fn ledger_charged_micros(&self) -> Result<i64> {
                let mut tx = self.snapshot().await?;
                let open_from = Self::open_from(&mut tx).await?;
                let row = sqlx::query(rows::CHARGED_SQL).bind(open_from).fetch_one(&mut *tx).await.db()?;
                tx.commit().await.db()?;
                row.int("micros")
            }

            async fn billed_output(&self, job: &JobId) -> Result<Option<(i64, i64)>> {
                let row = sqlx::query("SELECT quantity, amount_micros FROM usage_events WHERE id = $1")
                    .bind(format!("{job}/output"))
                    .fetch_optional(&self.pool)
                    .await
                    .db()?;
                row.map(|r| Ok((r.int("quantity")?, r.int("amount_micros")?))).transpose()
            }

            async fn retained(&self, finished_before_ms: Option<i64>) -> Result<Vec<Retained>> {
                let rows = sqlx::query(
                    "SELECT j.id AS id, j.tenant_id AS tenant_id, COALESCE(t.tier, '') AS tier,
                            j.attempts AS attempts, COALESCE(j.output_bytes, 0) AS bytes,
                            COALESCE(j.finished_at_ms, 0) AS finished_at_ms,
                            j.output_path AS output_path, j.metadata_path AS metadata_path
                     FROM jobs j LEFT JOIN tenants t ON t.id = j.tenant_id
                     WHERE j.output_path IS NOT NULL AND (CAST($1 AS BIGINT) IS NULL OR j.finished_at_ms < $1)",
                )
                .bind(finished_before_ms)
                .fetch_all(&self.pool)
                .await
                .db()?;
                rows.iter().map(rows::retained).collect()
            }

            async fn forget_output(&self, job: &JobId, now_ms: i64) -> Result<()> {
                let mut tx = self.write().await?;
                sqlx::query("UPDATE jobs SET output_path = NULL, metadata_path = NULL WHERE id = $1")
                    .bind(job.as_str())
                    .execute(&mut *tx)
                    .await
                    .db()?;
                sqlx::query(storage::REMOVE_CLIP).bind(job.as_str()).bind(now_ms).execute(&mut *tx).await.db()?;
                tx.commit().await.db()
            }

            async fn register_worker(&self, w: &WorkerInfo, now_ms: i64) -> Result<()> {
                let mut tx = self.write().await?;
                // Workers gone for a week leave the registry.
                sqlx::query("DELETE FROM workers WHERE last_heartbeat_ms < $1")
                    .bind(now_ms - crate::WORKER_FORGOTTEN_AFTER_MS)
                    .execute(&mut *tx)
                    .await
                    .db()?;
                sqlx::query(
                    "INSERT INTO workers (id, host, api_addr, adapter, version, started_at_ms, last_heartbeat_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $6)
                     ON CONFLICT (id) DO UPDATE SET host = $2, api_addr = $3, adapter = $4, version = $5,
                         last_heartbeat_ms = $6, stopped_at_ms = NULL",
                )
                .bind(w.id.as_str())
                .bind(&w.host)
                .bind(&w.api_addr)
                .bind(&w.adapter)
                .bind(&w.version)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .db()?;
                tx.commit().await.db()
            }

            async fn worker_heartbeat(&self, id: &WorkerId, jobs_in_flight: u32, now_ms: i64) -> Result<()> {
                let _turn = self.turn().await;
                sqlx::query("UPDATE workers SET last_heartbeat_ms = $1, jobs_in_flight = $2 WHERE id = $3")
                    .bind(now_ms)
                    .bind(i64::from(jobs_in_flight))
                    .bind(id.as_str())
                    .execute(&self.pool)
                    .await
                    .db()?;
                Ok(())
            }

            async fn worker_stopped(&self, id: &WorkerId, now_ms: i64) -> Result<()> {
                let _turn = self.turn().await;
                sqlx::query("UPDATE workers SET stopped_at_ms = $1, jobs_in_flight = 0 WHERE id = $2")
                    .bind(now_ms)
                    .bind(id.as_str())
                    .execute(&self.pool)
                    .await
                    .db()?;
                Ok(())
            }

            async fn workers(&self) -> Result<Vec<Worker>> {
                let rows = sqlx::query(
                    "SELECT id, host, api_addr, adapter, version, started_at_ms, last_heartbeat_ms, jobs_in_flight,
                            stopped_at_ms FROM workers ORDER BY started_at_ms DESC, id",
                )
                .fetch_all(&self.pool)
                .await
                .db()?;
                rows.iter().map(rows::worker).collect()
            }

            async fn try_lead(&self, task: &str, worker: &WorkerId, now_ms: i64, ttl_ms: i64) -> Result<bool> {
                let _turn = self.turn().await;
                let res = sqlx::query(
                    "INSERT INTO leaders (task, holder, until_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (task) DO UPDATE SET holder = $2, until_ms = $3
                     WHERE leaders.holder = $2 OR leaders.until_ms < $4",
                )
                .bind(task)
                .bind(worker.as_str())
                .bind(now_ms + ttl_ms)
                .bind(now_ms)
                .execute(&self.pool)
                .await
                .db()?;
                Ok(res.rows_affected() == 1)
            }

            async fn listen(&self, wake: Arc<tokio::sync::Notify>) -> Result<()> {
                self.listen_for_work(wake).await
            }
        }
    };
}

pub(crate) use sql_backend;
