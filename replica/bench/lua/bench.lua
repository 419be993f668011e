-- A Lua-class workload: tables, strings, closures, floats, sorting.
local n = tonumber(arg[1]) or 200000
local t = {}
local x = 12345
for i = 1, n do
  x = (x * 1103515245 + 12345) % 2147483648
  t[i] = x
end
table.sort(t)
local parts = {}
for i = 1, n, 97 do parts[#parts + 1] = string.format("%d", t[i] % 1000) end
local s = table.concat(parts, ",")
local words = {}
for w in s:gmatch("%d+") do words[w] = (words[w] or 0) + 1 end
local distinct = 0
for _ in pairs(words) do distinct = distinct + 1 end
local function fib(k) if k < 2 then return k end return fib(k - 1) + fib(k - 2) end
local acc = 0.0
for i = 1, n do acc = acc + math.sin(i) * math.sqrt(i) end
print(string.format("lua n=%d first=%d last=%d distinct=%d fib=%d acc=%.6f", n, t[1], t[n], distinct, fib(24), acc))
