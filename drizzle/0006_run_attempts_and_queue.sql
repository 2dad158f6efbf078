ALTER TABLE "runs" ADD COLUMN "attempt" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
CREATE INDEX "runs_queue_idx" ON "runs" USING btree ("created_at","id") WHERE "runs"."state" = 'queued';