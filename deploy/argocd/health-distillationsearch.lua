-- Argo CD health check for DistillationSearch (distillery.io/v1alpha1).
-- Runs in Argo CD's Lua sandbox (Lua 5.1, gopher-lua): `obj` is the live object.
--
--   no status yet, or status.observedGeneration behind metadata.generation -> Progressing
--   Pending / Running                                  -> Progressing (trials finished, best so far)
--   Stalled condition True (bad space, invalid trial)  -> Degraded (the operator's message)
--   Succeeded (a trial meets every target)             -> Healthy  ("best trial ...")
--   Failed with NoStudentMeetsTargets                  -> Healthy  ("no student meets the targets: ...")
--
-- Why "no student meets the targets" is Healthy: as for a rejected DistillationJob, the search did
-- what its spec asks (spend the budget, measure, decide); the answer is a finding, not a broken
-- resource, and nothing in the cluster can repair it. Who must gate on it reads the Succeeded
-- condition (kubectl wait --for=condition=Succeeded) or status.bestTrial.

local hs = {}

local function condition(status, type_)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Distillery operator to pick up the search"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition(status, "Stalled")
local succeeded = condition(status, "Succeeded")
local progress = ""
if status.progress ~= nil and status.progress.message ~= nil then
  progress = status.progress.message
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = (stalled.reason or "Stalled") .. ": " .. (status.message or stalled.message or "")
  return hs
end

if status.phase == "Succeeded" then
  hs.status = "Healthy"
  local what = "best trial " .. tostring(status.bestTrial)
  if status.studentModel ~= nil then
    what = what .. " (StudentModel " .. status.studentModel .. ")"
  end
  if progress ~= "" then
    what = what .. "; " .. progress
  end
  hs.message = what
  return hs
end

if status.phase == "Failed" and succeeded ~= nil and succeeded.reason == "NoStudentMeetsTargets" then
  hs.status = "Healthy"
  hs.message = "no student meets the targets: " .. (succeeded.message or progress)
  return hs
end

if status.phase == "Failed" then
  hs.status = "Degraded"
  local reason = (succeeded ~= nil and succeeded.reason) or "Failed"
  hs.message = reason .. ": " .. (status.message or "")
  return hs
end

hs.status = "Progressing"
hs.message = (status.phase or "Pending")
if progress ~= "" then
  hs.message = hs.message .. ": " .. progress
end
return hs
