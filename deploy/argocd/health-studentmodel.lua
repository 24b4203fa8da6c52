-- Argo CD health check for StudentModel (distillery.io/v1alpha1).
-- Runs in Argo CD's Lua sandbox (Lua 5.1, gopher-lua): `obj` is the live object.
--
--   no status yet, or status.observedGeneration behind metadata.generation -> Progressing
--   status.onFrontier true                             -> Healthy ("on the Pareto frontier")
--   status.onFrontier false                            -> Healthy ("dominated by ...")
--
-- A dominated student is still a valid, registered model (its artifacts exist and it can be
-- served); being off the frontier is information for whoever picks a model, not a fault.

local hs = {}
local status = obj.status

if status == nil or status.onFrontier == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Distillery operator to place the model on its frontier"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

hs.status = "Healthy"
if status.onFrontier == true then
  hs.message = "on the Pareto frontier"
  if status.group ~= nil then
    hs.message = hs.message .. " of group " .. status.group
  end
else
  local names = {}
  if status.dominatedBy ~= nil then
    for _, n in ipairs(status.dominatedBy) do
      table.insert(names, n)
    end
  end
  if #names > 0 then
    hs.message = "dominated by " .. table.concat(names, ", ")
  else
    hs.message = "not on the Pareto frontier"
  end
end
return hs
