//! The public listener: a pingora `ProxyHttp` that routes each request to a
//! model, admits it through the model's queue (shedding when it cannot be
//! served in time), and proxies it to the least-loaded ready worker over the
//! worker's unix socket, streaming the response back unbuffered. The
//! request's permit lives in its context, so it is released when the
//! response ends, fails, or the client hangs up.

pub mod cors;
pub mod large_body;
pub mod respond;
pub mod route;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use serde_json::json;

use crate::admission::{Permit, Rejection};
use crate::metrics::Metrics;
use crate::models::{Model, Models, Override};
use crate::reload::Live;
pub use respond::GatewayError;
use route::{route, Route};

/// Bodies up to this size are replayed to the worker from pingora's retry
/// buffer after the gateway read them to find the model (pingora's limit).
pub const REPLAYABLE_BODY: usize = 64 * 1024;

/// Header a client may send to wait less than the model's queue timeout.
pub const QUEUE_TIMEOUT_HEADER: &str = "x-thaw-queue-timeout-ms";

/// How many times one request is sent again after its worker did not take
/// it (each try on a connection that may be pooled, hence stale too).
const MAX_REPLAYS: u8 = 3;

/// The proxy.
pub struct Gateway {
    /// The models.
    pub models: Arc<Models>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Settings a reload changes (the largest body read to find the model).
    pub live: Arc<Live>,
    /// Connections to workers for bodies too large for pingora to replay.
    pub connector: pingora::connectors::http::Connector,
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    openai: bool,
    model: Option<Arc<Model>>,
    permit: Option<Permit>,
    cold: bool,
    /// An HTTP/1.0 client: a response without a length is sent
    /// close-delimited, never chunked.
    http10: bool,
    /// Why a request sent on after a failed connection got no other slot.
    refusal: Option<GatewayError>,
    /// A worker's response head arrived: the request is never sent again.
    answered: bool,
    /// Times the request was sent again because its worker did not take it.
    replays: u8,
    /// The largest body this request may have (the limit when it came).
    body_limit: u64,
    /// Body bytes sent to the worker on this try.
    body_sent: u64,
    /// The request's id (`x-request-id`), for its response and log line.
    request_id: String,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            openai: false,
            model: None,
            permit: None,
            cold: false,
            http10: false,
            refusal: None,
            answered: false,
            replays: 0,
            body_limit: 0,
            body_sent: 0,
            request_id: String::new(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Requests a client pipelines on one connection are answered in
        // order, one after another (RFC 9112 §9.3.2), instead of the
        // next one's bytes ending this one.
        session.as_downstream_mut().set_pipelining_enabled(true);
        ctx.request_id = request_id(session)?;
        if let Some(mut header) = cors::decide(&self.live.cors(), session.req_header_mut())? {
            header.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
            header.insert_header("x-thaw-worker", "gateway")?;
            session.write_response_header(header, true).await?;
            return Ok(true);
        }
        ctx.body_limit = self.live.max_body_bytes();
        // How long the body may pause, read here or streamed to a worker.
        session.set_read_timeout(Some(self.live.body_timeout()));
        let header = session.req_header();
        ctx.http10 = header.version == http::Version::HTTP_10;
        let method = header.method.as_str().to_string();
        let path = header.uri.path().to_string();
        if ctx.http10 {
            // An HTTP/1.0 client's expectation is ignored (RFC 9110
            // §10.1.1): it may take a 100 for the answer. Neither the
            // gateway nor a worker sends it one.
            session.req_header_mut().remove_header("expect");
        }
        let r = route(&method, &path);
        ctx.openai = path.starts_with("/v1");
        let body_after_model = matches!(r, Route::V2Model(_));
        let mut unreplayable = None;
        let encoding = compressed(session);
        let result = match r {
            // The body is read here to find the model: OpenAI's clients
            // send it uncompressed (KServe bodies, which may be
            // compressed, stream through to the worker, which decodes).
            Route::OpenAiBody => match &encoding {
                Some(coding) => Err(GatewayError::UnsupportedEncoding(coding.clone())),
                None => self
                    .read_body(session, ctx.body_limit)
                    .await
                    .and_then(|body| {
                        let model = self.model(&model_of(&body)?)?;
                        unreplayable = (body.len() > REPLAYABLE_BODY).then_some(body);
                        Ok(model)
                    }),
            },
            Route::V2Model(name) => self.model(&name),
            other => {
                self.answer_here(session, other, &path).await?;
                return Ok(true);
            }
        };
        let model = match result.and_then(|model| serves(&model, &path).map(|()| model)) {
            Ok(model) => model,
            Err(e) => return self.reject(session, ctx, &e).await,
        };
        if encoding.is_some() {
            // The worker decodes a compressed KServe body; what it decodes
            // to is held to the gateway's limit too (the workers have
            // none of their own), so a small body cannot expand without
            // bound.
            session
                .req_header_mut()
                .insert_header(DECODED_LIMIT, ctx.body_limit.to_string())?;
        }
        if body_after_model {
            // A free slot now: no queueing, so the body streams through
            // to the worker as it comes.
            let limit = ctx.body_limit;
            if declared_length(session).is_some_and(|n| n > limit) {
                ctx.model = Some(model);
                return self
                    .reject(session, ctx, &GatewayError::TooLarge(limit))
                    .await;
            }
            if let Some(permit) = model.admission.try_acquire() {
                self.metrics
                    .queue_wait_seconds
                    .with_label_values(&[&model.config.name])
                    .observe(0.0);
                ctx.model = Some(model);
                ctx.permit = Some(permit);
                return Ok(false);
            }
            // Read the body before queueing, so a client that hangs up
            // while queued can be noticed (the connection is then idle).
            match self.read_body(session, ctx.body_limit).await {
                Ok(body) => unreplayable = (body.len() > REPLAYABLE_BODY).then_some(body),
                Err(e) => return self.reject(session, ctx, &e).await,
            }
        }
        let admitted = match self.admit(session, ctx, model).await {
            Some(admitted) => admitted,
            // The client hung up while queued.
            None => return Ok(true),
        };
        match admitted {
            Ok(permit) => {
                ctx.permit = Some(permit);
                match unreplayable {
                    None => Ok(false),
                    Some(body) => {
                        self.forward_large(session, ctx, body).await?;
                        Ok(true)
                    }
                }
            }
            Err(e) => self.reject(session, ctx, &e).await,
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // Each try sends the body from its start.
        ctx.body_sent = 0;
        if ctx.permit.is_none() {
            // Sent on after a failed connection.
            if let Err(refusal) = self.reacquire(session, ctx).await {
                let status = refusal.status();
                ctx.refusal = Some(refusal);
                return Error::e_explain(
                    ErrorType::HTTPStatus(status),
                    "no other slot after a failed connection",
                );
            }
        }
        worker_peer(ctx).map(Box::new)
    }

    /// Holds a body streamed to the worker (one without a declared length)
    /// to the limit, as one read here is held: the workers have none of
    /// their own.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.body_sent += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_sent > ctx.body_limit {
            ctx.refusal = Some(GatewayError::TooLarge(ctx.body_limit));
            return Error::e_explain(ErrorType::HTTPStatus(413), "the request body is too large");
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.answered = true;
        if upstream.status.is_informational() {
            // A worker's `100 Continue`, passed on: it must not end the
            // connection (see `continue_keeping_alive`).
            session
                .as_downstream_mut()
                .set_close_on_response_before_downstream_finish(false);
            return Ok(());
        }
        session
            .as_downstream_mut()
            .set_close_on_response_before_downstream_finish(true);
        decorate(&self.metrics, ctx, upstream)?;
        cors::expose(session.req_header(), upstream)?;
        frame_for_client(session, ctx, upstream)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if unreachable(ctx, &e) {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        // A model request costs a worker's time and may not give the same
        // answer twice: it is sent again only when the worker did not take
        // it, and only while the body is still whole in the retry buffer.
        // The try keeps its slot: a dead worker's socket then refuses the
        // connection and `fail_to_connect` sends it to another slot.
        let mut e = e.more_context(format!("worker {peer}"));
        let replay = !session.as_ref().retry_buffer_truncated() && self.replay(session, ctx, &e);
        e.set_retry(replay);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Ctx,
    ) -> pingora::proxy::FailToProxy {
        let err = match (ctx.refusal.take(), e.etype(), e.esource()) {
            (Some(refusal), ..) => refusal,
            // The client broke its request (a malformed chunk, data after
            // its body) or stopped sending it; if it is still there, it
            // reads why.
            (None, _, pingora::ErrorSource::Downstream) => body_failed(e),
            (None, ..) => worker_failed(ctx, e),
        };
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => err.status(),
        };
        if final_response(session).is_none() {
            // The connection ends with this answer: say so.
            session.set_keepalive(None);
            if matches!(err, GatewayError::TooLarge(_)) {
                // A client still sending the body reads the 413 instead
                // of a reset.
                drain_body(session).await;
            }
            if let Err(write) = respond::error(session, &err, ctx.openai).await {
                tracing::debug!("writing the {code}: {write}");
            }
        }
        ctx.permit = None;
        pingora::proxy::FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// pingora logs every failed request at ERROR. A failure of the
    /// client's own making (it hung up, broke its body, stopped sending)
    /// is no fault of the gateway's, and its request line (`logging`,
    /// with the error and a 499 or 4xx) already says what happened: an
    /// ERROR for each would page someone for a client's flaky network.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        e.esource() == &pingora::ErrorSource::Downstream
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.permit = None;
        // A client that hung up before any answer is counted as nginx
        // counts it: 499.
        let status = final_response(session).map_or(499, |r| r.status.as_u16());
        let model = ctx.model.as_ref().map_or("-", |m| m.config.name.as_str());
        let elapsed = ctx.start.elapsed();
        if ctx.model.is_some() {
            self.metrics
                .requests
                .with_label_values(&[model, status_label(status).as_ref()])
                .inc();
            self.metrics
                .request_seconds
                .with_label_values(&[model])
                .observe(elapsed.as_secs_f64());
        }
        tracing::info!(
            model,
            status,
            micros = elapsed.as_micros() as u64,
            error = e.map(|e| e.to_string()),
            path = session.req_header().uri.path(),
            request_id = ctx.request_id,
            "request"
        );
    }
}

impl Gateway {
    /// Waits for a permit on `model`, or for the client to hang up (`None`).
    /// A model that closed because a reload replaced it hands the request
    /// to its successor; one that was removed answers 404 from then on.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        mut model: Arc<Model>,
    ) -> Option<Result<Permit, GatewayError>> {
        let timeout = model.config.queue.timeout;
        let deadline_at = Instant::now() + deadline(session, timeout);
        // A request can only follow a successor that a reload published
        // while it waited; the bound is a guard, not a policy.
        for _ in 0..8 {
            ctx.model = Some(model.clone());
            ctx.cold = model.admission.ready_instances() == 0;
            let left = deadline_at.saturating_duration_since(Instant::now());
            let admitted = tokio::select! {
                admitted = model.admission.acquire(left) => admitted,
                _ = session.as_downstream_mut().read_body_or_idle(true) => {
                    // The client hung up (or broke the protocol) while
                    // queued: dropping the acquire future has taken it off
                    // the queue.
                    session.set_keepalive(None);
                    return None;
                }
            };
            match admitted {
                Ok(permit) => {
                    self.metrics
                        .queue_wait_seconds
                        .with_label_values(&[&model.config.name])
                        .observe(permit.waited().as_secs_f64());
                    return Some(Ok(permit));
                }
                Err(Rejection::Closed) => match self.successor(&model) {
                    Ok(next) => model = next,
                    Err(refusal) => return Some(Err(refusal)),
                },
                Err(rejection) => return Some(Err(rejection.into())),
            }
        }
        Some(Err(closed(&model)))
    }

    /// Where a request that `model` refused as closed goes: to the model a
    /// reload replaced it with; else it is answered (503 with the reason,
    /// or 404 once the model is removed).
    fn successor(&self, model: &Model) -> Result<Arc<Model>, GatewayError> {
        match self.models.get(&model.config.name) {
            Some(next) if next.generation() != model.generation() => Ok(next),
            Some(_) => Err(closed(model)),
            None => Err(GatewayError::UnknownModel(model.config.name.clone())),
        }
    }

    /// Another slot for a request whose worker was unreachable, within what
    /// is left of its queue deadline; like `admit`, it follows the model to
    /// its successor.
    async fn reacquire(&self, session: &Session, ctx: &mut Ctx) -> Result<(), GatewayError> {
        let Some(mut model) = ctx.model.clone() else {
            return Err(GatewayError::BadGateway("no model for the request".into()));
        };
        let left =
            deadline(session, model.config.queue.timeout).saturating_sub(ctx.start.elapsed());
        let deadline_at = Instant::now() + left;
        for _ in 0..8 {
            let left = deadline_at.saturating_duration_since(Instant::now());
            match model.admission.acquire(left).await {
                Ok(permit) => {
                    ctx.permit = Some(permit);
                    ctx.model = Some(model);
                    return Ok(());
                }
                Err(Rejection::Closed) => model = self.successor(&model)?,
                Err(rejection) => return Err(rejection.into()),
            }
        }
        Err(closed(&model))
    }

    fn model(&self, name: &str) -> Result<Arc<Model>, GatewayError> {
        self.models
            .get(name)
            .ok_or_else(|| GatewayError::UnknownModel(name.to_string()))
    }

    /// Reads the whole body under the size limit. A body that fits
    /// pingora's retry buffer is replayed to the worker by the proxy; a
    /// larger one is forwarded by `large_body`.
    async fn read_body(&self, session: &mut Session, limit: u64) -> Result<Bytes, GatewayError> {
        if declared_length(session).is_some_and(|n| n > limit) {
            return Err(GatewayError::TooLarge(limit));
        }
        // The client waits for a go-ahead before it sends the body: give
        // it here, and take the expectation off the request, which the
        // worker then receives with its body already read.
        if expects_continue(session) {
            continue_keeping_alive(session)
                .await
                .map_err(|e| GatewayError::BadRequest(format!("answering Expect: {e}")))?;
            session.req_header_mut().remove_header("expect");
        }
        session.enable_retry_buffering();
        let mut body = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() as u64 > limit {
                        return Err(GatewayError::TooLarge(limit));
                    }
                }
                Ok(None) => return Ok(body.freeze()),
                Err(e) => {
                    // A body whose framing broke or that stopped arriving
                    // leaves no way to find where the next request starts.
                    session.set_keepalive(None);
                    return Err(body_failed(&e));
                }
            }
        }
    }

    /// Whether to send the request again after `e`: the worker did not take
    /// it, no response has begun, and it has not been sent too many times.
    /// Counted and logged when so.
    fn replay(&self, session: &Session, ctx: &mut Ctx, e: &Error) -> bool {
        if !untaken(e)
            || ctx.answered
            || final_response(session).is_some()
            || ctx.replays >= MAX_REPLAYS
        {
            return false;
        }
        ctx.replays += 1;
        let model = ctx.model.as_ref().map_or("-", |m| m.config.name.as_str());
        self.metrics.replayed.with_label_values(&[model]).inc();
        tracing::warn!(
            model,
            error = %e,
            "the worker did not take the request: sending it again"
        );
        true
    }

    async fn forward_large(&self, session: &mut Session, ctx: &mut Ctx, body: Bytes) -> Result<()> {
        loop {
            let Some((upstream, peer)) = self.connect_large(session, ctx).await? else {
                return Ok(());
            };
            let result = large_body::forward(
                &self.connector,
                upstream,
                session,
                &peer,
                body.clone(),
                |s, h| {
                    ctx.answered = true;
                    decorate(&self.metrics, ctx, h)?;
                    cors::expose(s.req_header(), h)?;
                    frame_for_client(s, ctx, h)
                },
            )
            .await;
            let Err(e) = result else {
                return Ok(());
            };
            if self.replay(session, ctx, &e) {
                continue;
            }
            if final_response(session).is_none() {
                respond::error(session, &worker_failed(ctx, &e), ctx.openai).await?;
            }
            return Ok(());
        }
    }

    /// A connection to the request's worker for `forward_large`; `None`
    /// when the request got its answer here instead (no other slot, or
    /// the connection failed otherwise).
    async fn connect_large(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Option<(HttpSession, HttpPeer)>> {
        // A worker whose socket has no listener is left for another slot,
        // as the proxy path does (`fail_to_connect`).
        loop {
            let peer = worker_peer(ctx)?;
            match self.connector.get_http_session(&peer).await {
                Ok((upstream, _reused)) => return Ok(Some((upstream, peer))),
                Err(e) if unreachable(ctx, &e) => {
                    if let Err(refusal) = self.reacquire(session, ctx).await {
                        respond::error(session, &refusal, ctx.openai).await?;
                        return Ok(None);
                    }
                }
                Err(e) => {
                    respond::error(session, &worker_failed(ctx, &e), ctx.openai).await?;
                    return Ok(None);
                }
            }
        }
    }

    async fn reject(&self, session: &mut Session, ctx: &Ctx, e: &GatewayError) -> Result<bool> {
        let shed_reason = match e {
            GatewayError::Shed { reason, .. } => Some(*reason),
            GatewayError::QueueTimeout => Some("timeout"),
            _ => None,
        };
        if let (Some(model), Some(reason)) = (&ctx.model, shed_reason) {
            self.metrics
                .shed
                .with_label_values(&[model.config.name.as_str(), reason])
                .inc();
        }
        // A body read whole leaves the connection ready for the client's
        // next request; one left unread (or refused as too large) ends it.
        // One that stopped arriving is not waited for again.
        let too_large = matches!(e, GatewayError::TooLarge(_));
        let stalled = matches!(e, GatewayError::RequestTimeout(_));
        if too_large || stalled || !discard_body(session, ctx.body_limit).await {
            session.set_keepalive(None);
        }
        // A client waiting for a go-ahead has not sent its body.
        if too_large && !expects_continue(session) {
            drain_body(session).await;
        }
        respond::error(session, e, ctx.openai).await?;
        Ok(true)
    }

    /// Routes answered by the gateway itself, without waking any model.
    async fn answer_here(&self, session: &mut Session, r: Route, path: &str) -> Result<()> {
        let openai = path.starts_with("/v1");
        // A body nobody reads (a POST to an unknown route or model) is
        // read and dropped when small, so the connection serves the
        // client's next request.
        if !discard_body(session, self.live.max_body_bytes()).await {
            session.set_keepalive(None);
        }
        let (status, body) = match r {
            Route::OpenAiModels => (200, self.openai_models()),
            Route::OpenAiModel(name) => match self.models.get(&name) {
                Some(m) => (200, openai_model(&m)),
                None => {
                    return respond::error(session, &GatewayError::UnknownModel(name), true).await
                }
            },
            Route::UnknownVersion { model, version } => {
                let e = match self.models.get(&model) {
                    Some(_) => GatewayError::UnknownVersion { model, version },
                    None => GatewayError::UnknownModel(model),
                };
                return respond::error(session, &e, false).await;
            }
            Route::V2Server => (
                200,
                json!({
                    "name": "thaw",
                    "version": env!("CARGO_PKG_VERSION"),
                    "extensions": ["binary_tensor_data"],
                }),
            ),
            Route::V2Health => {
                let live = path.ends_with("/live");
                (
                    200,
                    if live {
                        json!({"live": true})
                    } else {
                        json!({"ready": true})
                    },
                )
            }
            Route::V2ModelMetadata(name) => match self.models.get(&name) {
                Some(m) => (200, m.metadata.clone()),
                None => {
                    // Triton's `/v2/models/stats` reads as a model's
                    // metadata: unless a model has that name, say what the
                    // client asked for.
                    let e = match respond::triton_extension(path) {
                        Some(_) => GatewayError::NotFound(path.to_string()),
                        None => GatewayError::UnknownModel(name),
                    };
                    return respond::error(session, &e, false).await;
                }
            },
            Route::V2ModelReady(name) => match self.models.get(&name) {
                // A configured model is ready to take requests: at zero
                // instances they queue while it wakes. One that admits
                // none (drained, failing to start) is not, and says why.
                Some(m) => match not_ready(&m) {
                    None => (200, json!({"name": m.config.name, "ready": true})),
                    Some(why) => (
                        503,
                        json!({"name": m.config.name, "ready": false, "error": why}),
                    ),
                },
                None => {
                    return respond::error(session, &GatewayError::UnknownModel(name), false).await
                }
            },
            Route::NotFound { .. } => {
                return respond::error(session, &GatewayError::NotFound(path.to_string()), openai)
                    .await
            }
            Route::MethodNotAllowed { allow, .. } => {
                return respond::error(session, &GatewayError::MethodNotAllowed(allow), openai)
                    .await
            }
            Route::OpenAiBody | Route::V2Model(_) => {
                return respond::error(session, &GatewayError::NotFound(path.to_string()), openai)
                    .await
            }
        };
        respond::json(
            session,
            status,
            &body,
            &[("x-thaw-worker", "gateway".into())],
        )
        .await
    }

    fn openai_models(&self) -> serde_json::Value {
        let data: Vec<_> = self.models.all().iter().map(|m| openai_model(m)).collect();
        json!({"object": "list", "data": data})
    }
}

/// A model as OpenAI's model object (with thaw's `kind` and
/// `ready_instances`).
fn openai_model(m: &Model) -> serde_json::Value {
    json!({
        "id": m.config.name,
        "object": "model",
        "created": m.created(),
        "owned_by": "thaw",
        "kind": m.kind,
        "ready_instances": m.admission.stats().ready_instances,
    })
}

/// Why `model` would refuse a request now (drained, or failing to start),
/// or `None` when it takes requests (at zero instances too: they wait
/// while it wakes).
fn not_ready(model: &Model) -> Option<String> {
    (model.admission.is_closed() || model.pool.failure().is_some()).then(|| why_closed(model))
}

/// Whether a failed connection to the request's worker means its socket has
/// no listener: it died and the supervisor has not seen the exit yet (its
/// requests fail at once, so it would look least loaded). Nothing reached
/// it, so the request may go to another slot; the worker leaves routing,
/// the supervisor replaces it at once (`Pool::unreachable`), and the
/// request's permit is given back.
fn unreachable(ctx: &mut Ctx, e: &Error) -> bool {
    if !matches!(
        e.etype(),
        ErrorType::ConnectRefused | ErrorType::ConnectError
    ) {
        return false;
    }
    let (Some(model), Some(permit)) = (&ctx.model, ctx.permit.take()) else {
        return false;
    };
    model.admission.remove_instance(permit.instance());
    model.pool.unreachable(permit.instance());
    tracing::warn!(
        model = %model.config.name,
        instance = permit.instance().0,
        "no listener on a ready worker's socket: sending the request elsewhere"
    );
    true
}

/// The address of the request's worker (its slot's), with the model's
/// timeouts.
fn worker_peer(ctx: &Ctx) -> Result<HttpPeer> {
    let (Some(model), Some(permit)) = (&ctx.model, &ctx.permit) else {
        return Error::e_explain(
            ErrorType::InternalError,
            "no permit for an admitted request",
        );
    };
    let mut peer = HttpPeer::new_uds(permit.address(), false, String::new())?;
    peer.options.connection_timeout = Some(Duration::from_secs(5));
    peer.options.read_timeout = Some(model.config.queue.response_timeout);
    Ok(peer)
}

/// What a client is told when its request's body could not be read.
fn body_failed(e: &Error) -> GatewayError {
    match e.etype() {
        ErrorType::ReadTimedout => {
            GatewayError::RequestTimeout("the request body stopped arriving".into())
        }
        ErrorType::Custom("InvalidChunk" | "InvalidTrailerEnd") => {
            GatewayError::BadRequest("the request body's chunked encoding is malformed".into())
        }
        ErrorType::Custom("PrematureBodyEnd") => {
            GatewayError::BadRequest("the request body ended before its declared length".into())
        }
        etype => GatewayError::BadRequest(format!("reading the request body: {}", etype.as_str())),
    }
}

/// The final response written to the client, if any: a `100 Continue`
/// does not count, a final one (an error, say) can still follow it.
fn final_response(session: &Session) -> Option<&ResponseHeader> {
    session
        .response_written()
        .filter(|r| !r.status.is_informational())
}

/// What a client is told when its worker failed with `e`.
fn worker_failed(ctx: &Ctx, e: &Error) -> GatewayError {
    match (e.etype(), &ctx.model) {
        (ErrorType::ReadTimedout, Some(model)) => {
            GatewayError::WorkerTimeout(model.config.queue.response_timeout)
        }
        (etype, _) => GatewayError::BadGateway(format!("the worker failed: {}", etype.as_str())),
    }
}

/// Whether `e` shows that the worker did not take the whole request, so it
/// cannot have acted on it: writing the request to it failed (its end of
/// the connection is closed: a pooled connection to a worker that has
/// died), or its end closed with part of the request unread, which a unix
/// socket reports as a reset (an end closed after reading it all reads as
/// an orderly close: that request may have been served, and is not sent
/// again).
fn untaken(e: &Error) -> bool {
    if e.esource() != &pingora::ErrorSource::Upstream {
        return false;
    }
    match e.etype() {
        ErrorType::WriteError => true,
        ErrorType::ReadError => e
            .root_cause()
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset),
        _ => false,
    }
}

/// The 503 of a model that admits nothing: drained by an operator, or
/// failing to start.
fn closed(model: &Model) -> GatewayError {
    GatewayError::Unavailable {
        message: why_closed(model),
        retry_after: Duration::from_secs(1),
    }
}

/// Why `model` admits nothing.
fn why_closed(model: &Model) -> String {
    let name = &model.config.name;
    match (model.override_state(), model.pool.failure()) {
        (Some(Override::Drained), _) => {
            format!("model {name:?} is drained (`thaw ctl scale {name} --min N` brings it back)")
        }
        (_, Some(why)) => format!("model {name:?} cannot start: {why}"),
        (_, None) => format!("model {name:?} is shutting down"),
    }
}

/// Adds `x-thaw-worker` (and, after a scale-up, `x-thaw-cold-start-ms`) to
/// a worker's response; a cold request's time from its slot to the
/// response's head is the cold start's `first_response` phase.
fn decorate(metrics: &Metrics, ctx: &Ctx, header: &mut ResponseHeader) -> Result<()> {
    header.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
    if let (Some(model), Some(permit)) = (&ctx.model, &ctx.permit) {
        let worker = format!("{}/{}", model.config.name, permit.instance());
        header.insert_header("x-thaw-worker", worker)?;
        if ctx.cold {
            let ms = permit.waited().as_millis().to_string();
            header.insert_header("x-thaw-cold-start-ms", ms)?;
            metrics
                .cold_start_seconds
                .with_label_values(&[model.config.name.as_str(), "first_response"])
                .observe(permit.held().as_secs_f64());
        }
    }
    Ok(())
}

/// An HTTP/1.0 client cannot read a chunked body: a response without a
/// length goes to it close-delimited (the connection then ends with it).
fn frame_for_client(session: &mut Session, ctx: &Ctx, header: &mut ResponseHeader) -> Result<()> {
    let chunked = header
        .headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    if ctx.http10 && chunked {
        header.remove_header("transfer-encoding");
        header.remove_header("content-length");
        header.insert_header("connection", "close")?;
        session.set_keepalive(None);
    }
    Ok(())
}

/// Whether the client waits for `100 Continue` before it sends its body.
fn expects_continue(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get("expect")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The header that names a request, in its response, the worker's request
/// and the log lines of both (nginx's `$request_id`, Envoy's).
pub const REQUEST_ID: &str = "x-request-id";

/// The request's id: the client's `x-request-id` when it sent a usable one
/// (1 to 128 visible ASCII characters), else a new one, unique across
/// gateways and restarts (a random prefix for the process, a count);
/// written into the request, so the worker gets it and the gateway's own
/// answers echo it.
fn request_id(session: &mut Session) -> Result<String> {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let given = session
        .req_header()
        .headers
        .get(REQUEST_ID)
        .map(|v| v.as_bytes())
        .filter(|v| (1..=128).contains(&v.len()) && v.iter().all(u8::is_ascii_graphic))
        .map(|v| String::from_utf8_lossy(v).into_owned());
    if let Some(id) = given {
        return Ok(id);
    }
    let prefix = PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    });
    let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("{prefix:016x}{next:016x}");
    session
        .req_header_mut()
        .insert_header(REQUEST_ID, id.as_str())?;
    Ok(id)
}

/// The header that tells a worker the most a compressed body may decode
/// to (the gateway's `max_body_bytes` when the request came).
const DECODED_LIMIT: &str = "x-thaw-decoded-limit";

/// The request's `Content-Encoding`, when its body is not sent as it is:
/// the codings of every such header line (one list, RFC 9110 §5.3),
/// `identity` left out.
fn compressed(session: &Session) -> Option<String> {
    let codings: Vec<String> = session
        .req_header()
        .headers
        .get_all("content-encoding")
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty() && c != "identity")
                .collect::<Vec<_>>()
        })
        .collect();
    (!codings.is_empty()).then(|| codings.join(", "))
}

/// Writes `100 Continue`. pingora ends a connection whose response begins
/// before the request's body has ended, which a 100 always does: every
/// request with `Expect: 100-continue` lost its connection, its 200 too.
/// The check is off while the 100 is written; a final response before the
/// body has ended still ends the connection.
async fn continue_keeping_alive(session: &mut Session) -> Result<()> {
    let downstream = session.as_downstream_mut();
    downstream.set_close_on_response_before_downstream_finish(false);
    let written = downstream.write_continue_response().await;
    downstream.set_close_on_response_before_downstream_finish(true);
    written
}

/// The request's Content-Length, when it has one.
fn declared_length(session: &Session) -> Option<u64> {
    session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads and drops the body of a request answered without it, when the
/// client is sending it (no `Expect: 100-continue` waiting for a go-ahead)
/// and it is within `limit`; true when the whole body has been read, so
/// the connection can take the client's next request.
async fn discard_body(session: &mut Session, limit: u64) -> bool {
    if session.as_downstream_mut().is_body_done() {
        return true;
    }
    if expects_continue(session) || declared_length(session).is_some_and(|n| n > limit) {
        return false;
    }
    let mut read = 0u64;
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                read += chunk.len() as u64;
                if read > limit {
                    return false;
                }
            }
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// 400 when `model`'s kind does not serve `path` (embeddings from a chat
/// model, chat from a scorer, KServe `infer` on a chat model), decided
/// here so that a misdirected request does not wake the model just to be
/// refused by it. The words are the worker's.
fn serves(model: &Model, path: &str) -> Result<(), GatewayError> {
    use thaw_snapshot::ModelKind;
    let (Some(kind), name) = (model.kind, &model.config.name) else {
        return Ok(());
    };
    let refusal = match path {
        "/v1/embeddings" if kind != ModelKind::Embedding => {
            format!("model {name:?} does not produce embeddings: its kind is {kind}")
        }
        "/v1/chat/completions" | "/v1/completions" if kind != ModelKind::Chat => {
            format!("model {name:?} does not generate text: its kind is {kind}")
        }
        _ if path.starts_with("/v2/") && kind == ModelKind::Chat => format!(
            "model {name:?} generates text: use POST /v1/chat/completions or /v1/completions"
        ),
        _ => return Ok(()),
    };
    Err(GatewayError::WrongKind(refusal))
}

/// Reads and drops what is left of a refused body (up to a cap and a time
/// limit), so that a client still sending it reads the 413 instead of a
/// connection reset (nginx's lingering close).
async fn drain_body(session: &mut Session) {
    const CAP: usize = 16 << 20;
    let mut drained = 0usize;
    let drain = async {
        while let Ok(Some(chunk)) = session.read_request_body().await {
            drained += chunk.len();
            if drained > CAP {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}

/// A status as a metric label, without an allocation for the common ones.
fn status_label(status: u16) -> std::borrow::Cow<'static, str> {
    match status {
        200 => "200".into(),
        400 => "400".into(),
        404 => "404".into(),
        413 => "413".into(),
        429 => "429".into(),
        499 => "499".into(),
        502 => "502".into(),
        503 => "503".into(),
        504 => "504".into(),
        other => other.to_string().into(),
    }
}

/// The request's queue deadline: the model's timeout, or less if the client
/// asks for less.
fn deadline(session: &Session, timeout: Duration) -> Duration {
    session
        .req_header()
        .headers
        .get(QUEUE_TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(timeout, |ms| timeout.min(Duration::from_millis(ms)))
}

/// The `model` of an OpenAI request body.
pub fn model_of(body: &Bytes) -> Result<String, GatewayError> {
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<serde_json::Value>,
    }
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(GatewayError::BadRequest("the request body is empty".into())),
        // A struct also reads from a JSON array: refuse one here.
        Some(b'{') => {}
        Some(_) => {
            return Err(GatewayError::BadRequest(
                "the request body must be a JSON object".into(),
            ))
        }
    }
    let named: Named = serde_json::from_slice(body)
        .map_err(|e| GatewayError::BadRequest(format!("invalid JSON body: {e}")))?;
    match named.model {
        Some(serde_json::Value::String(m)) => Ok(m),
        Some(_) => Err(GatewayError::BadRequest("'model' must be a string".into())),
        None => Err(GatewayError::BadRequest(
            "missing required parameter: 'model'".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_from_body() {
        let ok = Bytes::from_static(br#"{"input": ["a"], "model": "minilm"}"#);
        assert_eq!(model_of(&ok), Ok("minilm".to_string()));
        for (bad, says) in [
            (&b""[..], "empty"),
            (b"  \n", "empty"),
            (b"{", "invalid JSON"),
            (br#"{"input": "a"}"#, "missing required parameter: 'model'"),
            (br#"{"model": 3}"#, "'model' must be a string"),
            (b"[1]", "must be a JSON object"),
            (b"null", "must be a JSON object"),
        ] {
            let e = model_of(&Bytes::copy_from_slice(bad)).expect_err("refused");
            assert_eq!(e.status(), 400, "{bad:?}");
            let message = e.body(false)["error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(message.contains(says), "{bad:?}: {message}");
        }
    }
}
