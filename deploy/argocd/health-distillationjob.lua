-- Argo CD health check for DistillationJob (distillery.io/v1alpha1).
-- Runs in Argo CD's Lua sandbox (Lua 5.1, gopher-lua): `obj` is the live object.
--
--   no status yet, or status.observedGeneration behind metadata.generation -> Progressing
--   Pending / Running                                  -> Progressing (stage, percent, epoch)
--   Failed (or the Stalled condition is True)          -> Degraded (the operator's message)
--   Succeeded and the student accepted                 -> Healthy  ("accepted: ...")
--   Succeeded and the student rejected                 -> Healthy  ("rejected: ...")
--
-- Why a rejected student is Healthy: Argo CD's health says whether a resource reached the state
-- its spec asks for. A DistillationJob asks for "distill, measure, decide"; a rejected student
-- is that request carried out (a verdict, with its reasons and the measured numbers in status),
-- not a broken resource, and nothing in the cluster can repair it: only a new spec can. Marking
-- it Degraded would leave the Application Degraded forever, page whoever watches Argo CD
-- health for a normal experiment outcome, and block sync waves that wait for health. Who must
-- gate on acceptance reads the Accepted condition (kubectl wait --for=condition=Accepted) or
-- status.accepted; the message here starts with "rejected:" so the UI shows it at a glance.

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

local function fmt_number(value, pattern)
  if type(value) ~= "number" then
    return nil
  end
  return string.format(pattern, value)
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Distillery operator to pick up the job"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to start generation " .. tostring(generation) ..
    " (status is for generation " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local phase = status.phase
local stalled = condition(status, "Stalled")
local succeeded = condition(status, "Succeeded")

if phase == "Failed" or (stalled ~= nil and stalled.status == "True")
    or (succeeded ~= nil and succeeded.status == "False") then
  hs.status = "Degraded"
  local reason = (succeeded ~= nil and succeeded.reason) or (stalled ~= nil and stalled.reason) or "Failed"
  local message = status.message or (succeeded ~= nil and succeeded.message) or "the trainer failed"
  hs.message = reason .. ": " .. message
  return hs
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  local accepted = condition(status, "Accepted")
  local is_accepted = status.accepted == true or (accepted ~= nil and accepted.status == "True")
  local parts = {}
  local speedup = fmt_number(status.speedup, "speedup %.2fx")
  if speedup ~= nil then
    table.insert(parts, speedup)
  end
  local retention = fmt_number(status.accuracyRetention, "retention %.4f")
  if retention ~= nil then
    table.insert(parts, retention)
  end
  local numbers = table.concat(parts, ", ")
  if is_accepted then
    local what = "accepted"
    if status.studentModel ~= nil then
      what = what .. ": StudentModel " .. status.studentModel
    end
    if numbers ~= "" then
      what = what .. " (" .. numbers .. ")"
    end
    hs.message = what
  else
    local reasons = {}
    if status.decision ~= nil and status.decision.reasons ~= nil then
      for _, r in ipairs(status.decision.reasons) do
        table.insert(reasons, r)
      end
    end
    local why = table.concat(reasons, "; ")
    if why == "" and accepted ~= nil and accepted.message ~= nil then
      why = accepted.message
    end
    if why == "" then
      why = "targets not met"
    end
    hs.message = "rejected: " .. why
    if numbers ~= "" then
      hs.message = hs.message .. " (" .. numbers .. ")"
    end
  end
  return hs
end

-- Pending, Running, or a phase this script does not know yet: the job is under way.
hs.status = "Progressing"
local message = phase or "Pending"
local progress = status.progress
if progress ~= nil then
  if progress.stage ~= nil and progress.stage ~= "" then
    message = message .. ": " .. progress.stage
  end
  local percent = fmt_number(progress.percent, "%.0f%%")
  if percent ~= nil then
    message = message .. " " .. percent
  end
  if progress.epoch ~= nil then
    message = message .. ", epoch " .. tostring(progress.epoch)
    if progress.totalEpochs ~= nil then
      message = message .. "/" .. tostring(progress.totalEpochs)
    end
  end
elseif succeeded ~= nil and succeeded.message ~= nil and succeeded.message ~= "" then
  message = message .. ": " .. succeeded.message
end
hs.message = message
return hs
