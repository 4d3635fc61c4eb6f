/**
 * `fragcache/express`: the Express view engine and whole-page caching (Django's `cache_page` and cache
 * middleware). Express stays an optional peer dependency: nothing here imports it at run time.
 *
 * @example
 * import { cachePage } from 'fragcache/express';
 * engine.express(app);
 * app.get('/articles/:id', cachePage('15m', { tags: (req) => [`article:${req.params.id}`] }), (req, res) => res.render('article', …));
 * @module
 */
export { useEngine, ENGINE_SETTING, type ExpressViewOptions, type ExpressAppLike } from './page/view';
export {
  cachePage,
  cacheMiddleware,
  pageCache,
  withoutParams,
  invalidatePage,
  invalidatePageTag,
  defaultPageCache,
  type PageCacheOptions,
  type SiteCacheOptions,
  type PageMiddleware,
  type PageCachePair,
  type PageReq,
  type PageRes,
} from './page/middleware';
export { PageCache, routePath, type PageMeta, type PageEntry, type PageRequest } from './page/cache';
export { parseCacheControl, parseVary, refusal, etagMatches, type Refusal, type CacheControl } from './page/policy';
