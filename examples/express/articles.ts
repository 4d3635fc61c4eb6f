/**
 * The example's data: a few articles in memory, and an event emitted whenever one is saved (the app binds
 * cache invalidation to it with `engine.invalidateOn`).
 */
import { EventEmitter } from 'node:events';

export interface Comment {
  author: string;
  text: string;
}

export interface Article {
  id: number;
  title: string;
  author: string;
  body: string;
  updatedAt: number;
  comments: Comment[];
}

/** Users of the fake cookie session (`Cookie: uid=alice`). */
export const USERS: Record<string, { id: string; name: string; readingList: number[] }> = {
  alice: { id: 'alice', name: 'Alice', readingList: [1, 3] },
  bob: { id: 'bob', name: 'Bob', readingList: [2] },
};

/** Article repository; emits `saved` (with the article) after every save. */
export class Articles extends EventEmitter<{ saved: [Article] }> {
  private readonly byId = new Map<number, Article>();

  constructor(count = 5) {
    super();
    for (let id = 1; id <= count; id++) {
      this.byId.set(id, {
        id,
        title: `Article ${id}`,
        author: id % 2 ? 'Ada' : 'Grace',
        body: `<p>${'Lorem ipsum dolor sit amet, consectetur adipiscing elit. '.repeat(20)}</p>`.repeat(5),
        updatedAt: 0,
        comments: Array.from({ length: 150 }, (_, i) => ({ author: `reader${i}`, text: `Comment ${i} on article ${id} <with markup & such>` })),
      });
    }
  }

  list(): Article[] {
    return [...this.byId.values()];
  }

  get(id: number): Article | undefined {
    return this.byId.get(id);
  }

  /** Updates an article's title and/or body and announces it. */
  save(id: number, changes: { title?: unknown; body?: unknown }): Article | undefined {
    const a = this.byId.get(id);
    if (!a) return undefined;
    if (typeof changes.title === 'string') a.title = changes.title;
    if (typeof changes.body === 'string') a.body = changes.body;
    a.updatedAt = Date.now();
    this.emit('saved', a);
    return a;
  }
}
