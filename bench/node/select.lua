-- One point select by primary key + close per /v2/pipeline request (a
-- baton-less, self-closing stream), random keys in 1..ROWS. Requests are
-- pre-formatted in init() so wrk spends its CPU on HTTP, not on Lua.
local rows = tonumber(os.getenv("ROWS") or "100000")
local fmt = '{"baton":null,"requests":[{"type":"execute","stmt":{"sql":"SELECT id, v FROM kv WHERE id = ?","args":[{"type":"integer","value":"%d"}]}},{"type":"close"}]}'
local reqs, n, i = {}, 4096, 0
init = function(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  local headers = { ["Content-Type"] = "application/json" }
  for k = 1, n do
    reqs[k] = wrk.format("POST", nil, headers, string.format(fmt, math.random(1, rows)))
  end
end
request = function()
  i = i % n + 1
  return reqs[i]
end
