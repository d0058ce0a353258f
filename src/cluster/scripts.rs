//! The Lua scripts every node runs in Redis. Each is one atomic step: no
//! other client's command runs between its calls, so a room's `seq`, its
//! capped stream, its presence hash and the publish always agree.
//!
//! Keys (all under `kp:`):
//! * `r:<code>:epoch` — the room's stream incarnation; made (from the
//!   caller's candidate) when missing, which also restarts `seq` at 0, so a
//!   Redis that lost its data shows up as another epoch, never as a silent
//!   restart of the numbering.
//! * `r:<code>:seq` — the last number given; `r:<code>:s` — the capped
//!   stream, entry id `<seq>-0`, fields `m` (the message) and `k` (kind).
//! * `r:<code>:d:<epoch>:<seq>` — the bytes of the document event `seq`
//!   (its `document_sync` JSON without the closing `,"seq":N}`). Neither
//!   the stream entry nor the published message of a document carries its
//!   bytes (Redis cuts a subscriber off after a few MB of output): they
//!   are a numbered notice, and every node reads the bytes from this key
//!   on its command thread. The latest document's key lives as long as the
//!   room's other keys; one a newer document replaced stays
//!   [`DOC_KEEP_SECONDS`] more, for nodes still reading it, then goes, so
//!   Redis holds one document per room plus those replaced just now.
//!   `r:<code>:doc` — the `seq` of the latest document.
//! * `r:<code>:p` — presence: shown peer id → `<node>|<conn>|<peer json>`.
//! * `nodes` — every node id; `n:<id>` — alive while it exists (TTL);
//!   `n:<id>:rooms` — rooms where that node has peers.
//! * channel `e:<code>` — the published messages.
//!
//! A message is `<seq>|<epoch>|<node>|<conn or ->|<kind>|<from>\n<body>`.

/// How long a document's bytes stay in Redis after a newer document
/// replaced them: nodes that have its notice but not yet its bytes read
/// them within [`super::FETCH_TIMEOUT`] or give the room up.
pub const DOC_KEEP_SECONDS: u64 = 30;

/// Shared by every script: numbers one event, appends it to the stream
/// and publishes it. `head` is the message after `<seq>|<epoch>|`, `body`
/// what follows it. A document's body goes to its own key: the stream
/// entry and the published message are the notice alone.
const EMIT: &str = r#"
local P = 'kp:'
local DAY = 86400
local KEEP = 30
local function emit(code, cand, maxlen, kind, head, body)
  local base = P .. 'r:' .. code
  local epoch = redis.call('GET', base .. ':epoch')
  if not epoch then
    epoch = cand
    redis.call('SET', base .. ':epoch', epoch, 'EX', DAY)
    redis.call('SET', base .. ':seq', 0, 'EX', DAY)
    redis.call('DEL', base .. ':s', base .. ':doc')
  end
  local seq = redis.call('INCR', base .. ':seq')
  local prefix = seq .. '|' .. epoch .. '|' .. head
  if kind == 's' then
    local dk = base .. ':d:' .. epoch .. ':'
    local prev = redis.call('GET', base .. ':doc')
    if prev then redis.call('EXPIRE', dk .. prev, KEEP) end
    redis.call('SET', dk .. seq, body, 'EX', DAY)
    redis.call('SET', base .. ':doc', seq, 'EX', DAY)
    body = ''
  end
  redis.call('XADD', base .. ':s', 'MAXLEN', maxlen, seq .. '-0', 'm', prefix .. body, 'k', kind)
  redis.call('EXPIRE', base .. ':epoch', DAY)
  redis.call('EXPIRE', base .. ':seq', DAY)
  redis.call('EXPIRE', base .. ':s', DAY)
  redis.call('PUBLISH', P .. 'e:' .. code, prefix .. body)
  return seq
end
"#;

/// A `data` or document event. ARGV: code, epoch candidate, maxlen, kind,
/// head, body. Returns the event's `seq`.
pub const PUBLISH: &str = r#"
return emit(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
"#;

/// A join. ARGV: code, epoch candidate, maxlen, node, shown id, presence
/// value, head, body, the `peer_left` body for a peer of that id elsewhere.
/// A peer of the same shown id on another connection is replaced: its
/// `peer_left` goes out first as kind `r`, naming its node and connection
/// so that node closes it. Returns the join's `seq`.
pub const JOIN: &str = r#"
local code, node, shown = ARGV[1], ARGV[4], ARGV[5]
local h = P .. 'r:' .. code .. ':p'
local old = redis.call('HGET', h, shown)
if old then
  local n2, c2 = string.match(old, '^([^|]*)|([^|]*)|')
  emit(code, ARGV[2], ARGV[3], 'r', n2 .. '|' .. c2 .. '|r|' .. shown .. '\n', ARGV[9])
end
redis.call('HSET', h, shown, ARGV[6])
redis.call('SADD', P .. 'n:' .. node .. ':rooms', code)
return emit(code, ARGV[2], ARGV[3], 'j', ARGV[7], ARGV[8])
"#;

/// A leave. ARGV: code, epoch candidate, maxlen, node, conn, shown id,
/// head, body. Published only while the presence entry is still this
/// connection's (a peer replaced elsewhere already had its `peer_left`).
/// Returns the `seq`, or 0 when nothing was published.
pub const LEAVE: &str = r#"
local code, node, conn, shown = ARGV[1], ARGV[4], ARGV[5], ARGV[6]
local h = P .. 'r:' .. code .. ':p'
local old = redis.call('HGET', h, shown)
local mine = node .. '|' .. conn .. '|'
if old and string.sub(old, 1, #mine) == mine then
  redis.call('HDEL', h, shown)
  return emit(code, ARGV[2], ARGV[3], 'l', ARGV[7], ARGV[8])
end
return 0
"#;

/// Where a node starts following a room: ARGV: code, epoch candidate,
/// count. Returns {epoch, seq, n, field, value, … (the n items of the
/// presence hash), message, …} where the messages are the last `count`
/// entries of the stream, oldest first (documents as their notices), all
/// as of one instant: the node's replay history starts from them.
pub const SNAPSHOT: &str = r#"
local base = P .. 'r:' .. ARGV[1]
local epoch = redis.call('GET', base .. ':epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', base .. ':epoch', epoch, 'EX', DAY)
  redis.call('SET', base .. ':seq', 0, 'EX', DAY)
  redis.call('DEL', base .. ':s', base .. ':doc')
end
local seq = tonumber(redis.call('GET', base .. ':seq') or '0')
local all = redis.call('HGETALL', base .. ':p')
local out = {epoch, seq, #all}
for i = 1, #all do out[#out + 1] = all[i] end
local recent = redis.call('XREVRANGE', base .. ':s', '+', '-', 'COUNT', ARGV[3])
for i = #recent, 1, -1 do
  local f = recent[i][2]
  for j = 1, #f, 2 do
    if f[j] == 'm' then out[#out + 1] = f[j + 1] end
  end
end
return out
"#;

/// A gap fill: ARGV: code, first seq, count. Returns {epoch or '', seq,
/// message, …}; a document entry gets its bytes back from its key while
/// Redis still holds them, else a single NUL byte in their place.
pub const FETCH: &str = r#"
local base = P .. 'r:' .. ARGV[1]
local epoch = redis.call('GET', base .. ':epoch') or ''
local seq = tonumber(redis.call('GET', base .. ':seq') or '0')
local out = {epoch, seq}
local entries = redis.call('XRANGE', base .. ':s', ARGV[2] .. '-0', '+', 'COUNT', ARGV[3])
for _, e in ipairs(entries) do
  local f = e[2]
  local m, k = nil, nil
  for i = 1, #f, 2 do
    if f[i] == 'm' then m = f[i + 1] elseif f[i] == 'k' then k = f[i + 1] end
  end
  if k == 's' then
    local id = string.match(e[1], '^(%d+)-')
    m = m .. (redis.call('GET', base .. ':d:' .. epoch .. ':' .. id) or '\0')
  end
  out[#out + 1] = m
end
return out
"#;

/// The key holding the bytes of the document event `seq` of the room's
/// stream incarnation `epoch` (see the module docs).
pub fn doc_key(code: &str, epoch: &str, seq: u64) -> String {
    format!("{}r:{code}:d:{epoch}:{seq}", super::PREFIX)
}

/// The node is alive (ARGV: node, how long its alive key lasts in
/// milliseconds); then every node whose
/// key is gone loses its peers, each with a `peer_left` (ARGV: epoch
/// candidate, maxlen). With ARGV[5] = '1' the node removes its own peers
/// instead (graceful stop, or a start under a reused NODE_ID). Returns the
/// number of peers removed.
pub const HEARTBEAT: &str = r#"
local me, ttl, cand, maxlen, own = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local removed = 0
local nodes
if own == '1' then
  nodes = {me}
  redis.call('DEL', P .. 'n:' .. me)
else
  redis.call('SET', P .. 'n:' .. me, '1', 'PX', ttl)
  redis.call('SADD', P .. 'nodes', me)
  nodes = redis.call('SMEMBERS', P .. 'nodes')
end
for _, node in ipairs(nodes) do
  if own == '1' or redis.call('EXISTS', P .. 'n:' .. node) == 0 then
    local rk = P .. 'n:' .. node .. ':rooms'
    for _, code in ipairs(redis.call('SMEMBERS', rk)) do
      local h = P .. 'r:' .. code .. ':p'
      local all = redis.call('HGETALL', h)
      for i = 1, #all, 2 do
        local v = all[i + 1]
        if string.sub(v, 1, #node + 1) == node .. '|' then
          redis.call('HDEL', h, all[i])
          local body = '{"type":"peer_left","peer_id":' .. cjson.encode(all[i])
          emit(code, cand, maxlen, 'l', node .. '|-|l|' .. all[i] .. '\n', body)
          removed = removed + 1
        end
      end
    end
    redis.call('DEL', rk)
    if own ~= '1' then redis.call('SREM', P .. 'nodes', node) end
  end
end
if own == '1' then redis.call('SREM', P .. 'nodes', me) end
return removed
"#;

/// A script with the shared prelude.
pub fn full(body: &str) -> String {
    let mut s = String::with_capacity(EMIT.len() + body.len());
    s.push_str(EMIT);
    s.push_str(body);
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_script_keeps_replaced_documents_as_long_as_documented() {
        let want = format!("local KEEP = {}\n", super::DOC_KEEP_SECONDS);
        assert!(super::EMIT.contains(&want));
    }
}
