-- One script for every target, so wrk does the same work for each of them.
-- Headers come from the environment: BENCH_TOKEN (Bearer), BENCH_TENANT, BENCH_IF_NONE_MATCH;
-- BENCH_BODY_FILE makes every request a POST of that file's content (JSON).
-- BENCH_FOLLOW_ETAG=1 makes each thread revalidate with the ETag of the last 200 it received,
-- as a caching client does (otherwise the first request's ETag is sent throughout).
-- done() prints one line, "BENCH {json}", that bench/run_foundation.py reads.

local token = os.getenv("BENCH_TOKEN")
local tenant = os.getenv("BENCH_TENANT")
local etag = os.getenv("BENCH_IF_NONE_MATCH")
local follow = os.getenv("BENCH_FOLLOW_ETAG") == "1"

wrk.method = "GET"
local body_file = os.getenv("BENCH_BODY_FILE")
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end
if token and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
if tenant and tenant ~= "" then wrk.headers["X-Stella-Tenant"] = tenant end
if etag and etag ~= "" then wrk.headers["If-None-Match"] = etag end

local threads = {}
local built = nil

-- Defined for every load (not only the following one) so that wrk's per-request work is equal.
function request()
  if built == nil then built = wrk.format() end
  return built
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  not_modified = 0
  other = 0
end

function response(status, headers, body)
  if status == 200 or status == 201 then  -- a page, or a created job
    ok = ok + 1
  elseif status == 304 then
    not_modified = not_modified + 1
  else
    other = other + 1
  end
  if follow and status == 200 then
    local tag = headers["etag"] or headers["ETag"]
    if tag and tag ~= wrk.headers["If-None-Match"] then
      wrk.headers["If-None-Match"] = tag
      built = wrk.format()
    end
  end
end

function done(summary, latency, requests)
  local s200, s304, sother = 0, 0, 0
  for _, thread in ipairs(threads) do
    s200 = s200 + thread:get("ok")
    s304 = s304 + thread:get("not_modified")
    sother = sother + thread:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"status_200":%d,"status_304":%d,"status_other":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, s200, s304, sother,
    e.connect + e.read + e.write + e.timeout))
end
