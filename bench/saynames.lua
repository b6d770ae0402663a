-- wrk script: SayName requests as the Mobilon PBX sends them (seed 002).
--
--   BENCH_NUMBERS=/tmp/b/numbers.txt wrk -t1 -c32 -d20s -s bench/saynames.lua \
--       http://127.0.0.1:18080/telephony/ws/VATS
--
-- Environment:
--   BENCH_NUMBERS   file with one caller number per line (required; made by
--                   `cargo run --release --example gen_counterparties`)
--   BENCH_USER      Basic auth user (default SOAP)
--   BENCH_PASSWORD  Basic auth password (default 123)
--   BENCH_ORDER     "seq" (default: each thread walks the file from its own
--                   offset) or "random"
--   BENCH_CHECK     "1": also read each answer and count known (non-empty
--                   <title>) and unknown callers; costs the client some CPU
--
-- done() prints one machine-readable line:
--   WRK_RESULT requests=N duration_s=S rps=R p50_ms=.. p90_ms=.. p99_ms=.. p999_ms=.. max_ms=.. non2xx=N socket_errors=N [known=N unknown=N]

local function b64(s)
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = chars:sub(c1 + 1, c1 + 1) .. chars:sub(c2 + 1, c2 + 1)
      .. (b and chars:sub(c3 + 1, c3 + 1) or "=") .. (c and chars:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end

local HEAD = '<?xml version="1.0" encoding="utf-8"?>\n'
  .. '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">\n'
  .. '    <soap:Body>\n'
  .. '        <SayName xmlns="http://VATS">\n'
  .. '            <Number>'
local TAIL = '</Number>\n'
  .. '        </SayName>\n'
  .. '    </soap:Body>\n'
  .. '</soap:Envelope>\n'

-- Main thread: give every thread an id, keep them for done().
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

-- Per-thread state (each wrk thread has its own Lua state).
local numbers = {}
local count = 0
local pos = 0
local random_order = false
local headers = nil
known = 0
unknown = 0

function init(args)
  local path = os.getenv("BENCH_NUMBERS")
  if not path or path == "" then
    error("BENCH_NUMBERS is not set: the file of caller numbers to ask for")
  end
  local f = assert(io.open(path, "r"))
  for line in f:lines() do
    local n = line:match("^%s*(.-)%s*$")
    if n ~= "" then
      count = count + 1
      numbers[count] = n
    end
  end
  f:close()
  if count == 0 then
    error("BENCH_NUMBERS file " .. path .. " has no numbers")
  end
  random_order = os.getenv("BENCH_ORDER") == "random"
  local id = tonumber(thread_id) or 0
  -- Threads start far apart in the file so they do not ask the same numbers in step.
  pos = (id * 7919 * 13) % count
  math.randomseed(1000 + id)
  local user = os.getenv("BENCH_USER") or "SOAP"
  local password = os.getenv("BENCH_PASSWORD") or "123"
  headers = {
    ["Content-Type"] = "text/xml",
    ["Authorization"] = "Basic " .. b64(user .. ":" .. password),
  }
end

function request()
  local n
  if random_order then
    n = numbers[math.random(count)]
  else
    pos = pos + 1
    if pos > count then pos = 1 end
    n = numbers[pos]
  end
  return wrk.format("POST", wrk.path, headers, HEAD .. n .. TAIL)
end

if os.getenv("BENCH_CHECK") == "1" then
  function response(status, headers, body)
    -- The answer escapes the inner document: &lt;title&gt;NAME&lt;/title&gt;
    if body:find("&lt;title&gt;&lt;/title&gt;", 1, true) or body:find("&lt;title/&gt;", 1, true) then
      unknown = unknown + 1
    elseif body:find("&lt;title&gt;", 1, true) then
      known = known + 1
    end
  end
end

function done(summary, latency, requests)
  local function ms(us) return string.format("%.3f", us / 1000) end
  local secs = summary.duration / 1e6
  local e = summary.errors
  local line = string.format(
    "WRK_RESULT requests=%d duration_s=%.2f rps=%.1f p50_ms=%s p90_ms=%s p99_ms=%s p999_ms=%s max_ms=%s non2xx=%d socket_errors=%d",
    summary.requests, secs, summary.requests / secs,
    ms(latency:percentile(50)), ms(latency:percentile(90)), ms(latency:percentile(99)),
    ms(latency:percentile(99.9)), ms(latency.max),
    e.status, e.connect + e.read + e.write + e.timeout)
  if os.getenv("BENCH_CHECK") == "1" then
    local k, u = 0, 0
    for _, t in ipairs(threads) do
      k = k + (tonumber(t:get("known")) or 0)
      u = u + (tonumber(t:get("unknown")) or 0)
    end
    line = line .. string.format(" known=%d unknown=%d", k, u)
  end
  io.write(line .. "\n")
end
