/**
 * Milliseconds to wait before reconnect attempt `attempt` (0 for the first after an
 * open socket): exponential backoff with full jitter, a uniform draw below a ceiling
 * that doubles from `minDelay` up to `maxDelay`, so that the thousands of phones that
 * leave one tunnel together do not dial the server together.
 */
export function backoff(attempt: number, minDelay: number, maxDelay: number): number {
  return Math.random() * Math.min(maxDelay, minDelay * 2 ** Math.min(attempt, 30));
}
