-- One single-row INSERT (autocommit) + close per /v2/pipeline request.
-- Requests are pre-formatted in init() so wrk spends its CPU on HTTP.
local fmt = '{"baton":null,"requests":[{"type":"execute","stmt":{"sql":"INSERT INTO ins(k, v) VALUES (?, ?)","args":[{"type":"integer","value":"%d"},{"type":"text","value":"value-%d"}]}},{"type":"close"}]}'
local reqs, n, i = {}, 4096, 0
init = function(args)
  local headers = { ["Content-Type"] = "application/json" }
  for k = 1, n do
    reqs[k] = wrk.format("POST", nil, headers, string.format(fmt, k, k))
  end
end
request = function()
  i = i % n + 1
  return reqs[i]
end
