-- wrk script: POST the same body (WRK_BODY_FILE) with every request; count answers by status.
-- Used by `python -m benchmark` and the rest of the lab (benchmark.harness.run_wrk), which build the body. The
-- Content-Type is WRK_CONTENT_TYPE, or multipart with boundary WRK_BOUNDARY.
local body_file = os.getenv("WRK_BODY_FILE")
local content_type = os.getenv("WRK_CONTENT_TYPE") or ("multipart/form-data; boundary=" .. os.getenv("WRK_BOUNDARY"))
local f = assert(io.open(body_file, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = content_type
-- One more header if asked, "Name: value" (the v2 binary extension's Inference-Header-Content-Length).
local extra = os.getenv("WRK_HEADER")
if extra and extra ~= "" then
  local name, value = extra:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end

-- Paced load if asked: each connection waits WRK_DELAY_MS before each request, so c connections send about
-- c * 1000 / WRK_DELAY_MS requests per second while answers are quick (wrk's own delay() hook).
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "")
if delay_ms and delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  no_retry_after = 0
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if (status == 429 or status == 503) and not (headers["retry-after"] or headers["Retry-After"]) then
    no_retry_after = no_retry_after + 1
  end
end

function done(summary, latency, requests)
  local merged = {}
  local missing = 0
  for _, thread in ipairs(threads) do
    missing = missing + thread:get("no_retry_after")
    for status, count in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(merged) do
    table.insert(parts, string.format('"%d": %d', status, count))
  end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "socket_errors": %d, "errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
    '"retry_after_missing": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout, missing,
    table.concat(parts, ", ")))
end
