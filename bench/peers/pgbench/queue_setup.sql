-- Queue table modelling one workflow step per row: :history finished ('done') rows, then
-- :rows queued ones (the runner substitutes both). The history keeps the plan honest:
-- with every row queued (or only 10 % done) the planner ranked the primary key equal to
-- the partial index at 120k rows, and then each claim walks past every row already done,
-- so throughput falls through the run. A real queue table always has finished rows.
DROP TABLE IF EXISTS q_steps;
CREATE TABLE q_steps (
    id           bigserial PRIMARY KEY,
    workflow_id  bigint      NOT NULL,
    step_name    text        NOT NULL,
    status       text        NOT NULL DEFAULT 'queued',
    attempts     int         NOT NULL DEFAULT 0,
    lease_owner  text,
    lease_until  timestamptz,
    payload      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO q_steps (workflow_id, step_name, status, payload)
SELECT g / 3, 'step_' || (g % 3), CASE WHEN g <= :history THEN 'done' ELSE 'queued' END,
       jsonb_build_object('n', g)
FROM generate_series(1, :history + :rows) g;
CREATE INDEX q_steps_queued ON q_steps (id) WHERE status = 'queued';
VACUUM ANALYZE q_steps;
